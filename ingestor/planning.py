"""Which pairs this process serves, and how they are spread over exchange connections. Pure: no I/O.

- ``select_pairs``: every configured pair, an explicit list, or the ``i``-th of ``n`` shards (pairs sorted by
  our symbol, the ``k``-th going to shard ``k % n + 1``), so shards are disjoint, cover every pair, and do not
  depend on the order of the configuration file.
- ``split_evenly``: contiguous chunks of at most ``max_per_chunk``, as equal as possible; the exchange modules
  (``binance.plan_connections``, ``okx.plan_connections``) use it to turn pairs into ``ConnectionPlan``s that
  respect each exchange's per-connection limits.
- ``status_suffix``: what sets a sharded process's feed status apart from its siblings'.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from shared import names
from shared.settings import Pair

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Shard:
    index: int  # 1-based
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 1 <= i <= n")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard | None:
    """``"2/3"`` -> ``Shard(2, 3)``; ``""`` -> None (no sharding)."""
    text = text.strip()
    if not text:
        return None
    i, sep, n = text.partition("/")
    if not sep or not i.isdigit() or not n.isdigit():
        raise ValueError(f"shard {text!r}: expected i/n, e.g. 1/2")
    return Shard(int(i), int(n))


def select_pairs(pairs: Sequence[Pair], shard: Shard | None = None, only: Sequence[str] = ()) -> list[Pair]:
    """The pairs one process serves. ``only`` (our symbols) narrows the list, kept in the configured order; a
    shard then sorts what is left by symbol and takes every ``count``-th, starting at its ``index``."""
    chosen = list(pairs)
    if only:
        wanted = set(only)
        unknown = sorted(wanted - {p.symbol for p in pairs})
        if unknown:
            raise ValueError(f"not configured pairs: {unknown}")
        chosen = [p for p in chosen if p.symbol in wanted]
    if shard is not None:
        chosen = sorted(chosen, key=lambda p: p.symbol)[shard.index - 1::shard.count]
    return chosen


def status_suffix(shard: Shard | None, only: Sequence[str] = ()) -> str:
    """``""`` for a process serving every pair (its status keeps the exchange's own names); ``"1/2"`` for a
    shard; ``"pairs-<crc32>"`` for an explicit list (stable for the same set of pairs)."""
    parts = []
    if only:
        parts.append(f"pairs-{zlib.crc32(','.join(sorted(set(only))).encode()):08x}")
    if shard is not None and shard.count > 1:
        parts.append(str(shard))
    return ":".join(parts)


def feed_status_key(exchange: str, suffix: str = "") -> str:
    """The status hash of one ingestor process: ``md:feed:<exchange>`` (``names.status_key``) when it serves
    every pair, ``md:feed:<exchange>:<suffix>`` (e.g. ``md:feed:binance:1/2``) for a shard, so shards of one
    exchange never overwrite each other's hash. The channel stays ``md:status:<exchange>``."""
    return names.status_key(f"{exchange}:{suffix}" if suffix else exchange)


def split_evenly(items: Sequence[T], max_per_chunk: int) -> list[list[T]]:
    """Contiguous chunks of at most ``max_per_chunk`` items, as few as possible, sizes differing by <= 1."""
    if max_per_chunk < 1:
        raise ValueError("max_per_chunk must be >= 1")
    if not items:
        return []
    n = -(-len(items) // max_per_chunk)
    q, r = divmod(len(items), n)
    out: list[list[T]] = []
    start = 0
    for i in range(n):
        size = q + (1 if i < r else 0)
        out.append(list(items[start:start + size]))
        start += size
    return out


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """One exchange connection: the pairs on it, its subscription keys, and what to send."""

    index: int  # 0-based, in the order the connections are opened
    symbols: tuple[str, ...]  # our symbols
    keys: tuple[str, ...]  # the exchange's names for the subscriptions (Binance streams, OKX "channel:instId")
    url: str
    subscribe: tuple[str, ...] = ()  # frames sent after connecting, ``subscribe_pace_s`` apart
    subscribe_pace_s: float = 0.0
    in_url: int = 0  # how many of ``keys`` are in the URL (Binance), the rest are in ``subscribe``
