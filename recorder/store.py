"""The recordings on disk: their index files, listing, reading back, retention. No asyncio; small reads only
except ``read_records`` and ``scan``."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from recorder import format as fmt


@dataclass
class Index:
    frames: int = 0
    first_us: int = 0
    last_us: int = 0
    pairs: dict[str, list[int]] = field(default_factory=dict)  # venue symbol -> [frames, first_us, last_us]


def index_path(path: Path) -> Path:
    return path.with_name(path.name + fmt.INDEX_SUFFIX)


def read_index(path: Path) -> Index | None:
    try:
        body = orjson.loads(index_path(path).read_bytes())
        pairs = {str(k): [int(x) for x in v] for k, v in body["pairs"].items()}
        return Index(int(body["frames"]), int(body["first_us"]), int(body["last_us"]), pairs)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def recording_files(directory: Path) -> list[Path]:
    """Every recording under ``directory``, oldest hour first."""
    if not directory.is_dir():
        return []
    found = [(n.hour_us, p.name, p) for p in directory.rglob("*" + fmt.SUFFIX)
             if (n := fmt.parse_file_name(p.name)) is not None]
    return [p for _, _, p in sorted(found)]


def read_records(path: Path) -> Iterator[fmt.Record]:
    """Every frame of one recording, in file order. A file cut short (a crash, or the hour being written) ends
    at its last complete line; a line that does not parse is skipped."""
    with gzip.open(path, "rb") as f:
        try:
            for line in f:
                if not line.endswith(b"\n"):
                    return  # cut in the middle of a line
                try:
                    rec = fmt.decode_line(line)
                except fmt.FormatError:
                    continue
                if rec is not None:
                    yield rec
        except (EOFError, zlib.error, gzip.BadGzipFile):
            return


def scan(path: Path) -> Index:
    """The index of a file by reading it (for a file whose index is missing)."""
    idx = Index()
    for rec in read_records(path):
        ts = rec.recv_ts_us
        idx.frames += 1
        idx.first_us = ts if not idx.first_us else min(idx.first_us, ts)
        idx.last_us = max(idx.last_us, ts)
        sym = fmt.venue_symbol(rec.raw)
        if sym is not None:
            p = idx.pairs.setdefault(sym, [0, ts, ts])
            p[0] += 1
            p[2] = ts
    return idx


def index_of(path: Path) -> Index:
    idx = read_index(path)
    return idx if idx is not None else scan(path)


def apply_retention(directory: Path, days: float, gb: float, *, now_us: int, keep: Path | None = None) -> list[Path]:
    """Remove the recordings older than ``days`` (0: no limit), then the oldest until all of them take at most
    ``gb`` (0: no limit); never ``keep`` (the file being written). Returns what was removed."""
    removed: list[Path] = []
    files = recording_files(directory)
    sizes: dict[Path, int] = {}
    for p in files:
        try:
            sizes[p] = p.stat().st_size
        except FileNotFoundError:
            continue
    files = [p for p in files if p in sizes]

    def drop(p: Path) -> None:
        for q in (p, index_path(p)):
            try:
                q.unlink()
            except FileNotFoundError:
                pass
        removed.append(p)

    if days > 0:
        cutoff = now_us - int(days * 86_400 * 1_000_000)
        for p in list(files):
            n = fmt.parse_file_name(p.name)
            if n is not None and n.hour_us + fmt.HOUR_US <= cutoff and p != keep:
                drop(p)
                files.remove(p)
    if gb > 0:
        budget = int(gb * 1024 ** 3)
        total = sum(sizes[p] for p in files)
        for p in list(files):
            if total <= budget:
                break
            if p == keep:
                continue
            drop(p)
            total -= sizes[p]
    return removed
