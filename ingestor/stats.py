"""Counters of one ingestor, rate-limited logging, and the pure feed-state rule."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from shared.schema import FeedState


class RateLimitedLog:
    """At most one line per key every ``every_s`` seconds; the next line says how many were suppressed."""

    def __init__(self, logger: logging.Logger, every_s: float = 5.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object, fields: dict[str, object] | None = None) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            msg += f" (+{n} similar suppressed)"
        extra = {"fields": {**fields, "suppressed": n}} if fields is not None else None
        self.logger.log(level, msg, *args, extra=extra)
        return True

    def warning(self, key: str, msg: str, *args: object, fields: dict[str, object] | None = None) -> bool:
        return self.log(logging.WARNING, key, msg, *args, fields=fields)


@dataclass
class FeedStats:
    messages: dict[str, int] = field(default_factory=lambda: {"bbo": 0, "book": 0, "trade": 0})
    frames: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    errors: int = 0  # errors the exchange reported (OKX "error" events...)
    last_md_us: int = 0  # receive time of the last market data message
    last_frame_us: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


def feed_state(connected: bool, last_md_us: int, connected_since_us: int, now_us: int,
               stale_after_us: int) -> tuple[FeedState, str]:
    """``up`` only while connected AND market data arrived within ``stale_after_us`` on this connection."""
    if not connected:
        return "down", "not connected"
    if last_md_us < connected_since_us:
        if now_us - connected_since_us >= stale_after_us:
            return "stale", f"connected but no market data for {(now_us - connected_since_us) / 1e6:.1f}s"
        return "stale", "connected, waiting for market data"
    if now_us - last_md_us >= stale_after_us:
        return "stale", f"no market data for {(now_us - last_md_us) / 1e6:.1f}s"
    return "up", "receiving market data"
