"""Live candles from trades: a pure builder, one per (symbol, exchange filter, interval).

Buckets follow the trades' exchange time (``ts_event_us``), aligned on the Unix epoch, so every process
that sees the same trades builds the same candles. A bucket is closed either by a trade of a later
bucket or by ``close_until(now_us)`` (the caller's clock, minus a grace period for in-flight trades).
A bucket without trades becomes a flat candle at the previous close with zero volume; the builder starts
with the first trade it sees (never with a REST history). A trade older than the open bucket arrives
too late: it is counted in ``late`` and left out, so closed candles never change.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from decimal import Decimal

INTERVALS_US: dict[str, int] = {"1s": 1_000_000, "10s": 10_000_000, "1m": 60_000_000, "5m": 300_000_000}
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Candle:
    open_time_us: int
    close_time_us: int  # last microsecond inside the bucket (open_time_us + interval - 1)
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int
    closed: bool
    ts_event_us: int  # exchange time of the last trade that went into the candle (0 for a flat start)
    ts_recv_us: int  # when our ingestor received that trade


class KlineBuilder:
    def __init__(self, interval_us: int, history: int = 300) -> None:
        if interval_us <= 0:
            raise ValueError("interval must be positive")
        self.interval_us = interval_us
        self.keep = max(history, 1)
        self.history: deque[Candle] = deque(maxlen=self.keep)
        self.current: Candle | None = None
        self.late = 0
        self._last_ts: tuple[int, int] = (0, 0)

    def _bucket(self, ts_us: int) -> int:
        return ts_us - ts_us % self.interval_us

    def _flat(self, open_time_us: int, price: Decimal) -> Candle:
        ev, rc = self._last_ts
        return Candle(open_time_us, open_time_us + self.interval_us - 1, price, price, price, price, ZERO, 0,
                      False, ev, rc)

    def _roll_to(self, bucket_us: int) -> list[Candle]:
        """Close the open candle and every empty bucket before ``bucket_us``; leave a flat one open there."""
        cur = self.current
        assert cur is not None
        out: list[Candle] = []
        closed = replace(cur, closed=True)
        out.append(closed)
        gap = (bucket_us - cur.open_time_us) // self.interval_us - 1
        start = cur.open_time_us + self.interval_us
        if gap > self.keep:  # a long silence: keep only as many flat candles as history holds
            start += (gap - self.keep) * self.interval_us
        while start < bucket_us:
            out.append(replace(self._flat(start, closed.close), closed=True))
            start += self.interval_us
        self.history.extend(out)
        self.current = self._flat(bucket_us, closed.close)
        return out

    def add(self, price: Decimal, size: Decimal, ts_event_us: int, ts_recv_us: int) -> list[Candle]:
        """Fold one trade in; returns the candles this trade closed (oldest first)."""
        bucket = self._bucket(ts_event_us)
        out: list[Candle] = []
        cur = self.current
        if cur is not None and bucket < cur.open_time_us:
            self.late += 1
            return out
        if cur is not None and bucket > cur.open_time_us:
            out = self._roll_to(bucket)
            cur = self.current
        self._last_ts = (ts_event_us, ts_recv_us)
        if cur is None or cur.trades == 0:
            self.current = Candle(bucket, bucket + self.interval_us - 1, price, price, price, price, size, 1,
                                  False, ts_event_us, ts_recv_us)
        else:
            self.current = Candle(cur.open_time_us, cur.close_time_us, cur.open, max(cur.high, price),
                                  min(cur.low, price), price, cur.volume + size, cur.trades + 1, False,
                                  ts_event_us, ts_recv_us)
        return out

    def close_until(self, now_us: int) -> list[Candle]:
        """Close every bucket that ended at or before ``now_us``; returns them (oldest first)."""
        cur = self.current
        if cur is None or now_us <= cur.close_time_us:
            return []
        return self._roll_to(self._bucket(now_us))
