"""Replay of recorded exchange frames: line parsing (pure) and a pacing loop.

Our own recordings (``recorder.format``: ``*.rec.gz``, written by the ingestors) and two capture formats are
read (plain text or ``.gz``):

- cryptofeed raw recorder: a header ``<url> <-> <ts>``, lines the client sent ``<url> <- <ts>: <json>``
  (skipped) and received frames ``<unix_ts_seconds>: <json>``;
- hftbacktest: ``<recv_ts_ns> <json>``.

Binance frames are combined-stream frames ``{"stream": ..., "data": ...}`` and keep their stream name as
the routing key; OKX push frames ``{"arg": {...}, "data": [...]}`` are keyed by ``(channel, instId)``.
Everything else (subscribe acks, REST snapshots) is skipped.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from recorder import format as rec_fmt
from recorder import store as rec_store

if TYPE_CHECKING:
    from simulator.binance import BinanceServer
    from simulator.okx import OkxServer


@dataclass(frozen=True, slots=True)
class ReplayFrame:
    ts_us: int
    exchange: str  # binance | okx
    key: str | tuple[str, str]  # Binance stream name, or OKX (channel, instId)
    raw: bytes  # the frame as recorded
    data: bytes | None = None  # Binance: the inner payload, for raw (/ws) connections


def parse_line(line: str) -> tuple[int, str] | None:
    """A capture line → (receive time in µs, JSON text), or None for headers and sent frames."""
    line = line.strip()
    if not line or " <- " in line or " <-> " in line or " -> " in line:
        return None
    head, sep, rest = line.partition(": ")
    if sep and _is_number(head):
        return int(float(head) * 1_000_000), rest
    head, sep, rest = line.partition(" ")
    if sep and head.isdigit():
        return int(head) // 1000, rest
    return None


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def classify(ts_us: int, text: str) -> ReplayFrame | None:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    raw = text.encode()
    stream = obj.get("stream")
    if isinstance(stream, str) and "data" in obj:
        return ReplayFrame(ts_us, "binance", stream, raw, orjson.dumps(obj["data"]))
    arg = obj.get("arg")
    if isinstance(arg, dict) and "data" in obj and "event" not in obj:
        return ReplayFrame(ts_us, "okx", (str(arg.get("channel")), str(arg.get("instId"))), raw)
    return None


def read_frames(path: str | Path) -> Iterator[ReplayFrame]:
    p = Path(path)
    if rec_fmt.parse_file_name(p.name) is not None:
        yield from read_recording(p)
        return
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            parsed = parse_line(line)
            if parsed is None:
                continue
            frame = classify(*parsed)
            if frame is not None:
                yield frame


def read_recording(path: Path) -> Iterator[ReplayFrame]:
    """The market-data frames of one of our recordings (acks, pongs and binary frames are left out)."""
    for rec in rec_store.read_records(path):
        if isinstance(rec.raw, str):
            frame = classify(rec.recv_ts_us, rec.raw)
            if frame is not None:
                yield frame


SKIP_SUFFIXES = (".md", rec_fmt.INDEX_SUFFIX, ".tmp", ".json")


def source_files(paths: Iterable[str | Path], from_us: int = 0, to_us: int = 0) -> list[Path]:
    """The files to replay among ``paths`` (files, or folders searched recursively): our recordings whose hour
    meets ``[from_us, to_us)`` (0: open-ended) and any other file (a capture; its frames are filtered by time)."""
    out: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if not p.is_file() or p.name.endswith(SKIP_SUFFIXES):
                continue
            name = rec_fmt.parse_file_name(p.name)
            if name is not None and ((to_us and name.hour_us >= to_us)
                                     or (from_us and name.hour_us + rec_fmt.HOUR_US <= from_us)):
                continue
            out.append(p)
    return out


def timeline(paths: Iterable[Path], from_us: int = 0, to_us: int = 0) -> Iterator[ReplayFrame]:
    """Every frame of the files in one timeline (merged by receive time), within ``[from_us, to_us)``."""
    def within(path: Path) -> Iterator[ReplayFrame]:
        for fr in read_frames(path):
            if from_us and fr.ts_us < from_us:
                continue
            if to_us and fr.ts_us >= to_us:
                return
            yield fr
    return heapq.merge(*(within(p) for p in paths), key=lambda fr: fr.ts_us)


async def replay_timeline(frames: Iterable[ReplayFrame], binance: BinanceServer, okx: OkxServer, speed: float = 1.0,
                          max_gap_s: float = 5.0) -> int:
    """Send the frames in order to the subscribers of their streams, keeping the recorded gaps divided by
    ``speed`` (0: as fast as the clients read); a silence longer than ``max_gap_s`` of recorded time (0: none)
    is skipped. Returns the number of frames sent."""
    n = 0
    t0: int | None = None
    skipped = 0  # recorded µs of silences skipped
    prev = 0
    max_gap_us = int(max_gap_s * 1_000_000)
    start = time.monotonic()
    for fr in frames:
        n += 1
        if speed > 0:
            if t0 is None:
                t0 = prev = fr.ts_us
            if max_gap_us and fr.ts_us - prev > max_gap_us:
                skipped += fr.ts_us - prev
            prev = max(prev, fr.ts_us)
            delay = start + (fr.ts_us - t0 - skipped) / 1e6 / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 500 == 0:
                await asyncio.sleep(0)  # behind the clock: let the writers run
        elif n % 200 == 0:
            await binance.flush(60)
            await okx.flush(60)
        if isinstance(fr.key, str):  # Binance
            assert fr.data is not None
            binance.publish(fr.key, fr.data, fr.raw)
        else:
            okx.publish(fr.key, fr.raw)
    await binance.flush(60)
    await okx.flush(60)
    return n


def scan_keys(paths: list[str | Path]) -> tuple[set[str], set[tuple[str, str]]]:
    """Every Binance stream name and OKX (channel, instId) in the files, so clients may subscribe to them."""
    streams: set[str] = set()
    args: set[tuple[str, str]] = set()
    for path in paths:
        for fr in read_frames(path):
            if isinstance(fr.key, str):  # Binance
                streams.add(fr.key)
            else:
                args.add(fr.key)
    return streams, args


async def replay_file(path: str | Path, binance: BinanceServer, okx: OkxServer, speed: float = 1.0) -> int:
    """Send every frame of one file to the subscribers of its stream, every recorded gap kept (divided by
    ``speed``; 0: as fast as clients read); returns the number of frames sent."""
    return await replay_timeline(read_frames(path), binance, okx, speed, max_gap_s=0)
