"""Helpers for the trading tests: tokens, market data published as the ingestors do, an in-process matcher."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis

from matcher.engine import run_matcher
from shared import names, tokens
from shared.pubsub import RedisHub
from shared.schema import BBO, Book, FeedStatus, encode
from shared.settings import Settings
from shared.timeutil import now_us
from tests.mdfeed import keyspace_of, md_publish
from tests.servers import CLUSTER_PASS, redis_client


def auth(settings: Settings, user_id: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + tokens.issue(user_id, settings.auth.jwt_secret, 3600)}


async def publish_status(r: aioredis.Redis, exchange: str, state: str = "up") -> None:
    await md_publish(r, keyspace_of(r).status_channel(exchange), encode(FeedStatus(exchange, state, "test", now_us())))  # type: ignore[arg-type]


async def publish_bbo(r: aioredis.Redis, exchange: str, symbol: str, bid: str, ask: str, bid_sz: str = "10",
                      ask_sz: str = "10", ts_recv_us: int | None = None) -> None:
    t = ts_recv_us or now_us()
    raw = encode(BBO(exchange, symbol, Decimal(bid), Decimal(bid_sz), Decimal(ask), Decimal(ask_sz), 1, t, t))
    await r.set(keyspace_of(r).md_last_key("bbo", exchange, symbol), raw)
    await md_publish(r, keyspace_of(r).md_channel("bbo", exchange, symbol), raw)


async def publish_book(r: aioredis.Redis, exchange: str, symbol: str, bids: list[tuple[str, str]],
                       asks: list[tuple[str, str]]) -> None:
    t = now_us()
    raw = encode(Book(exchange, symbol, tuple((Decimal(p), Decimal(s)) for p, s in bids),
                      tuple((Decimal(p), Decimal(s)) for p, s in asks), 1, t, t))
    await r.set(keyspace_of(r).md_last_key("book", exchange, symbol), raw)
    await md_publish(r, keyspace_of(r).md_channel("book", exchange, symbol), raw)


@contextlib.asynccontextmanager
async def matcher(settings: Settings, redis_url: str, *, live: tuple[str, ...] = ("binance", "okx"),
                  reconcile_s: float = 10.0) -> AsyncIterator[asyncio.Task[None]]:
    """An in-process matcher, ready (subscribed and recovered) when the block starts; the exchanges in ``live``
    announced as up."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_matcher(settings, stop, redis_url=redis_url, reconcile_s=reconcile_s, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        if live:
            r = redis_client(redis_url)
            try:
                for ex in live:
                    await publish_status(r, ex)
            finally:
                await r.aclose()
        yield task
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        if not task.done():
            task.cancel()


async def wait_until(pred: Callable[[], Awaitable[bool]], within: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_status(c: httpx.AsyncClient, token: str, status: str, headers: dict[str, str],
                      within: float = 5.0) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal last
        last = (await c.get(f"/orders/{token}", headers=headers)).json()
        return last.get("status") == status

    try:
        await wait_until(done, within, f"order {token} to be {status}")
    except AssertionError:
        raise AssertionError(f"order {token} is {last.get('status')}, expected {status}: {last}") from None
    return last


@contextlib.asynccontextmanager
async def events(redis_url: str, user_id: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Collects the user's order events while the block runs (sharded pub/sub in the cluster pass)."""
    got: list[dict[str, Any]] = []
    hub = RedisHub(redis_url, CLUSTER_PASS, lambda _channel, data: got.append(orjson.loads(data)))
    await hub.start()
    try:
        await hub.acquire(names.user_events_channel(user_id))
        yield got
    finally:
        await hub.stop()
