"""``python -m recorder ls [PATH ...]``: what is recorded (exchanges, pairs, time ranges, sizes)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from recorder import format as fmt
from recorder import store
from shared.settings import SettingsError, load_settings


@dataclass
class Entry:
    path: Path
    exchange: str
    kind: str  # recording | capture
    size: int
    frames: int
    first_us: int
    last_us: int
    pairs: dict[str, list[int]] = field(default_factory=dict)  # our symbol (else the venue's) -> [n, first, last]


def _our_symbols() -> dict[str, str]:
    try:
        settings = load_settings()
    except SettingsError:
        return {}
    out: dict[str, str] = {}
    for p in settings.pairs:
        out[p.binance] = p.symbol
        out[p.okx] = p.symbol
    return out


def _capture_entry(path: Path, ours: dict[str, str]) -> Entry | None:
    from simulator.replay import read_frames  # capture formats are the simulator's

    e = Entry(path, "", "capture", path.stat().st_size, 0, 0, 0)
    exchanges: set[str] = set()
    for fr in read_frames(path):
        exchanges.add(fr.exchange)
        e.frames += 1
        e.first_us = fr.ts_us if not e.first_us else min(e.first_us, fr.ts_us)
        e.last_us = max(e.last_us, fr.ts_us)
        venue = fr.key.split("@")[0].upper() if isinstance(fr.key, str) else fr.key[1]
        p = e.pairs.setdefault(ours.get(venue, venue), [0, fr.ts_us, fr.ts_us])
        p[0] += 1
        p[2] = fr.ts_us
    if not e.frames:
        return None
    e.exchange = "+".join(sorted(exchanges))
    return e


def entries(paths: Sequence[Path]) -> list[Entry]:
    """Recordings (``*.rec.gz``, their index or a scan) and capture files among ``paths`` (files or folders)."""
    ours = _our_symbols()
    out: list[Entry] = []
    for root in paths:
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for p in files:
            if not p.is_file() or p.name.endswith((fmt.INDEX_SUFFIX, ".md", ".tmp")):
                continue
            name = fmt.parse_file_name(p.name)
            if name is None:
                cap = _capture_entry(p, ours)
                if cap is not None:
                    out.append(cap)
                continue
            idx = store.index_of(p)
            pairs: dict[str, list[int]] = {}
            for venue, v in idx.pairs.items():
                pairs[ours.get(venue, venue)] = v
            out.append(Entry(p, name.exchange, "recording", p.stat().st_size, idx.frames, idx.first_us, idx.last_us,
                             pairs))
    return out


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _range(a: int, b: int) -> str:
    return f"{fmt.format_time(a)} .. {fmt.format_time(b)}" if a else "(empty)"


def render(es: list[Entry]) -> str:
    if not es:
        return "no recordings\n"
    lines: list[str] = []
    by_ex: dict[str, list[Entry]] = {}
    for e in es:
        by_ex.setdefault(e.exchange, []).append(e)
    for ex, group in sorted(by_ex.items()):
        pairs = sorted({p for e in group for p in e.pairs})
        first = min((e.first_us for e in group if e.first_us), default=0)
        last = max((e.last_us for e in group), default=0)
        lines.append(f"{ex}: {len(group)} file(s), {_size(sum(e.size for e in group))}, "
                     f"{sum(e.frames for e in group):,} frames, {_range(first, last)}")
        lines.append(f"  pairs: {', '.join(pairs) or '-'}")
        for e in group:
            lines.append(f"  {e.path}  {_size(e.size)}  {e.frames:,} frames  {_range(e.first_us, e.last_us)}")
            for sym, (n, a, b) in sorted(e.pairs.items()):
                lines.append(f"      {sym:<12} {n:>10,} frames  {_range(a, b)}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recorder", description="The recorded exchange frames.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("ls", help="list exchanges, pairs, time ranges and sizes")
    ls.add_argument("paths", nargs="*", type=Path,
                    help="folders or files (default: recording.dir, <data>/recordings); capture files too")
    ls.add_argument("--json", action="store_true", help="one JSON object per file")
    args = ap.parse_args(argv)
    paths = list(args.paths)
    if not paths:
        try:
            paths = [load_settings().recording.path]
        except SettingsError as err:
            print(f"recorder: {err}", file=sys.stderr)
            return 2
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"recorder: no such file or folder: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    es = entries(paths)
    if args.json:
        for e in es:
            sys.stdout.write(orjson.dumps({
                "path": str(e.path), "exchange": e.exchange, "kind": e.kind, "bytes": e.size, "frames": e.frames,
                "first_us": e.first_us, "last_us": e.last_us,
                "pairs": {k: {"frames": v[0], "first_us": v[1], "last_us": v[2]} for k, v in e.pairs.items()},
            }).decode() + "\n")
    else:
        sys.stdout.write(render(es))
    return 0
