"""Publish market data into Redis exactly as an ingestor does (``shared.schema`` + ``shared.names``).

Reusable by any test: ``feed = MdFeed(aredis)``; ``await feed.bbo("binance", "BTCUSDT", "64000.1", "1",
"64000.2", "2")``; ``await feed.trade("okx", "BTCUSDT", "64000.1", "0.01", "buy")``; ``await
feed.status("okx", "up")``; ``async with feed.heartbeats("binance", "okx"): ...`` keeps feeds live
(``matcher=True``: also the matcher's heartbeat key, as a running matcher keeps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from shared import names
from shared.feed_health import HEARTBEAT_S
from shared.redis_conn import Client
from shared.schema import BBO, Book, FeedState, FeedStatus, Side, Trade, encode
from shared.timeutil import now_us


def keyspace_of(r: Client) -> names.Keyspace:
    """The names a system on ``r`` uses (a cluster client: the cluster's, default partitions)."""
    return names.Keyspace(cluster=isinstance(r, RedisCluster))


async def md_publish(r: Client, channel: str, raw: bytes) -> None:
    if isinstance(r, RedisCluster):
        await r.spublish(channel, raw)
    else:
        await r.publish(channel, raw)


class MdFeed:
    def __init__(self, redis: Client) -> None:
        self.redis = redis
        self.ks = keyspace_of(redis)
        self._seq = itertools.count(1)

    async def bbo(self, exchange: str, symbol: str, bid_px: str, bid_sz: str, ask_px: str, ask_sz: str, *,
                  ts_event_us: int | None = None, ts_recv_us: int | None = None, store_last: bool = True) -> BBO:
        now = now_us()
        msg = BBO(exchange, symbol, Decimal(bid_px), Decimal(bid_sz), Decimal(ask_px), Decimal(ask_sz),
                  next(self._seq), ts_event_us if ts_event_us is not None else now,
                  ts_recv_us if ts_recv_us is not None else now)
        raw = encode(msg)
        if store_last:
            await self.redis.set(self.ks.md_last_key("bbo", exchange, symbol), raw)
        await md_publish(self.redis, self.ks.md_channel("bbo", exchange, symbol), raw)
        return msg

    async def book(self, exchange: str, symbol: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]], *,
                   store_last: bool = True) -> Book:
        now = now_us()
        msg = Book(exchange, symbol, tuple((Decimal(p), Decimal(q)) for p, q in bids),
                   tuple((Decimal(p), Decimal(q)) for p, q in asks), next(self._seq), now, now)
        raw = encode(msg)
        if store_last:
            await self.redis.set(self.ks.md_last_key("book", exchange, symbol), raw)
        await md_publish(self.redis, self.ks.md_channel("book", exchange, symbol), raw)
        return msg

    async def trade(self, exchange: str, symbol: str, price: str, size: str, side: Side = "buy", *,
                    trade_id: str | None = None, ts_event_us: int | None = None,
                    ts_recv_us: int | None = None) -> Trade:
        now = now_us()
        msg = Trade(exchange, symbol, trade_id or str(next(self._seq)), Decimal(price), Decimal(size), side,
                    ts_event_us if ts_event_us is not None else now, ts_recv_us if ts_recv_us is not None else now)
        await md_publish(self.redis, self.ks.md_channel("trade", exchange, symbol), encode(msg))
        return msg

    async def status(self, exchange: str, state: FeedState = "up", reason: str = "") -> None:
        await md_publish(self.redis, self.ks.status_channel(exchange),
                         encode(FeedStatus(exchange, state, reason, now_us())))

    async def matcher_alive(self, ttl_ms: int = 5000) -> None:
        """The heartbeat a running matcher writes every second."""
        await self.redis.set(names.MATCHER_ALIVE_KEY, now_us(), px=ttl_ms)

    @contextlib.asynccontextmanager
    async def heartbeats(self, *exchanges: str, every_s: float = HEARTBEAT_S,
                         matcher: bool = False) -> AsyncIterator[set[str]]:
        """Publish ``up`` for the exchanges every ``every_s``; remove one from the yielded set to stop it (and
        ``"matcher"`` to stop the matcher heartbeat)."""
        alive = set(exchanges) | ({"matcher"} if matcher else set())
        stopping = False

        async def beat() -> None:
            # ``stopping``, not only the cancel: a cancel landing inside a Redis call has been seen to come out
            # as an error the suppress below swallows, and the loop then beat on and ``await task`` hung
            while not stopping:
                for ex in sorted(alive):
                    # a beat lost while Redis is away (fault tests restart it) is simply skipped, as an ingestor's
                    with contextlib.suppress(RedisError, OSError):
                        if ex == "matcher":
                            await self.matcher_alive()
                        else:
                            await self.status(ex, "up")
                await asyncio.sleep(every_s)

        task = asyncio.create_task(beat())
        try:
            yield alive
        finally:
            stopping = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
