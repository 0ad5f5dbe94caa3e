"""Replay of recorded exchange frames: line parsing (pure) and a pacing loop.

Two capture formats are read (plain text or ``.gz``):

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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

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
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            parsed = parse_line(line)
            if parsed is None:
                continue
            frame = classify(*parsed)
            if frame is not None:
                yield frame


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
    """Send every frame of one file to the subscribers of its stream; returns the number of frames read.

    ``speed`` 1 keeps the recorded gaps, 10 is ten times faster, 0 sends as fast as clients read.
    """
    n = 0
    t0: int | None = None
    start = time.monotonic()
    for fr in read_frames(path):
        n += 1
        if speed > 0:
            if t0 is None:
                t0 = fr.ts_us
            delay = start + (fr.ts_us - t0) / 1e6 / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif n % 200 == 0:
            # As fast as possible, but never faster than the clients read (no dropped frames).
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
