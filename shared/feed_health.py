"""Which exchanges' feeds are live, from the status messages the ingestors publish.

Ingestors publish a ``FeedStatus`` on every state change and as a heartbeat every second. A consumer counts an
exchange as live when its latest status says ``up`` and arrived less than ``stale_after_s`` ago, so a dead
ingestor process (which cannot announce its own death) drops out too.

An exchange served by several ingestor shards (``FeedStatus.shard``) is live only when every shard heard within
``FORGET_S`` is: a dead shard's pairs would otherwise trade on prices nobody updates. A shard not heard for that
long (removed by a new configuration) is forgotten.
"""

from __future__ import annotations

from shared.schema import FeedStatus

HEARTBEAT_S = 1.0
FORGET_S = 300.0


class FeedHealth:
    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_us = int(stale_after_s * 1_000_000)
        self.forget_us = int(max(FORGET_S, stale_after_s) * 1_000_000)
        # exchange -> shard -> (state, local receive time)
        self._last: dict[str, dict[str, tuple[str, int]]] = {}

    def update(self, status: FeedStatus, now_us: int) -> None:
        shards = self._last.setdefault(status.exchange, {})
        shards[status.shard] = (status.state, now_us)
        for shard, (_, t) in list(shards.items()):
            if now_us - t > self.forget_us:
                del shards[shard]

    def is_live(self, exchange: str, now_us: int) -> bool:
        heard = [(state, t) for state, t in self._last.get(exchange, {}).values() if now_us - t <= self.forget_us]
        return bool(heard) and all(state == "up" and now_us - t <= self.stale_after_us for state, t in heard)

    def heard(self) -> dict[str, tuple[str, int]]:
        """Exchange -> (state, local receive time in us) of its latest status message; with shards, the worst
        state and the oldest time (a silent shard ages the exchange)."""
        out: dict[str, tuple[str, int]] = {}
        rank = {"up": 0, "stale": 1, "down": 2}
        for ex, shards in self._last.items():
            if not shards:
                continue
            state = max((s for s, _ in shards.values()), key=lambda s: rank.get(s, 3))
            out[ex] = (state, min(t for _, t in shards.values()))
        return out

    def live(self, now_us: int) -> tuple[str, ...]:
        return tuple(sorted(ex for ex in self._last if self.is_live(ex, now_us)))
