"""Which exchanges' feeds are live, from the status messages the ingestors publish.

Ingestors publish a ``FeedStatus`` on every state change and as a heartbeat every second. A consumer
counts an exchange as live when its latest status says ``up`` and arrived less than ``stale_after_s``
ago, so a dead ingestor process (which cannot announce its own death) drops out too.
"""

from __future__ import annotations

from shared.schema import FeedStatus

HEARTBEAT_S = 1.0


class FeedHealth:
    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_us = int(stale_after_s * 1_000_000)
        self._last: dict[str, tuple[str, int]] = {}  # exchange -> (state, local receive time)

    def update(self, status: FeedStatus, now_us: int) -> None:
        self._last[status.exchange] = (status.state, now_us)

    def is_live(self, exchange: str, now_us: int) -> bool:
        st = self._last.get(exchange)
        return st is not None and st[0] == "up" and now_us - st[1] <= self.stale_after_us

    def heard(self) -> dict[str, tuple[str, int]]:
        """Exchange -> (state, local receive time in us) of its latest status message."""
        return dict(self._last)

    def live(self, now_us: int) -> tuple[str, ...]:
        return tuple(sorted(ex for ex in self._last if self.is_live(ex, now_us)))
