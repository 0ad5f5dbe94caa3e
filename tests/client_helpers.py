"""A whole system for client tests: the real gateway, an in-process matcher, and a market data feed published
as the ingestors do (both exchanges live, BTCUSDT and ETHUSDT quotes, books and trades several times a second)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal

import redis.asyncio as aioredis

from tests.mdfeed import MdFeed
from tests.servers import make_settings, run_gateway
from tests.trading_helpers import matcher

MIDS = {"BTCUSDT": Decimal("60000.00"), "ETHUSDT": Decimal("3000.00")}


async def _publish(feed: MdFeed, every_s: float, stop: asyncio.Event) -> None:
    for i in itertools.count():
        if stop.is_set():
            return
        for sym, mid in MIDS.items():
            drift = Decimal(i % 7) / 100
            for ex, off in (("binance", Decimal("0")), ("okx", Decimal("0.01"))):
                bid, ask = mid + drift - off, mid + drift + Decimal("0.01") + off
                await feed.bbo(ex, sym, str(bid), "2", str(ask), "2")
                await feed.trade(ex, sym, str(ask if i % 2 else bid), "0.01", "buy" if i % 2 else "sell")
                tick = Decimal("0.01")
                await feed.book(ex, sym, [(str(bid - k * tick), str(k + 1)) for k in range(5)],
                                [(str(ask + k * tick), str(k + 1)) for k in range(5)])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


@contextlib.asynccontextmanager
async def running_system(redis_url: str, *, every_s: float = 0.1) -> AsyncIterator[str]:
    """Yields the gateway's base URL while market data flows and the matcher settles orders."""
    settings = make_settings(redis_url)
    r = aioredis.Redis.from_url(redis_url)
    feed = MdFeed(r)
    try:
        async with feed.heartbeats("binance", "okx"), matcher(settings, redis_url), \
                run_gateway(redis_url, settings) as base:
            # stopped between publishes: a redis-py command cancelled halfway can hang its connection
            stop = asyncio.Event()
            task = asyncio.create_task(_publish(feed, every_s, stop))
            try:
                yield base
            finally:
                stop.set()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 10)
    finally:
        await r.aclose()
