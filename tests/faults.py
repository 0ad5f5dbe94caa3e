"""The pieces of a fault-injection scenario (``tests/test_faults.py``, ``tests/soak_faults.py``): a burst of
orders from retrying clients, touch moves that fill them, a fill-event collector, and the final audit.

A client retries a POST with the **same** ``token_id`` until it gets a definite answer: 201 (placed), or
409 ``duplicate_token_id`` (an earlier attempt was applied, its answer lost with the connection); both count as
acknowledged. 503 (Redis down) and connection errors (gateway down) are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis

from shared import names
from shared.schema import BBO, encode
from shared.timeutil import now_us
from tests.ledger_audit import audit_users
from tests.stack import Stack, feed_heartbeats, wait_for

DEPOSIT = Decimal(100_000)
SYMBOL = "BTCUSDT"
HIGH_ASK, LOW_ASK, FINAL_ASK = 49_500, 47_900, 47_000


@dataclass
class Outcome:
    acked: dict[str, set[str]] = field(default_factory=dict)
    fill_events: dict[str, list[str]] = field(default_factory=dict)
    retries: int = 0
    recovery_s: float = 0.0


async def publish_bbo(r: aioredis.Redis, exchange: str, bid: str, ask: str, size: str = "10") -> None:
    t = now_us()
    raw = encode(BBO(exchange, SYMBOL, Decimal(bid), Decimal(size), Decimal(ask), Decimal(size), 1, t, t))
    await r.set(names.md_last_key("bbo", exchange, SYMBOL), raw)
    await r.publish(names.md_channel("bbo", exchange, SYMBOL), raw)


async def place(c: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any], out: Outcome,
                deadline: float) -> bool:
    """True when acknowledged (201, or 409 duplicate after a retry)."""
    while time.monotonic() < deadline:
        try:
            resp = await c.post("/orders", json=body, headers=headers)
        except httpx.HTTPError:
            out.retries += 1
            await asyncio.sleep(0.1)
            continue
        if resp.status_code == 201:
            return True
        if resp.status_code == 409 and resp.json().get("code") == "duplicate_token_id":
            return True
        if resp.status_code in (502, 503, 504):
            out.retries += 1
            await asyncio.sleep(0.1)
            continue
        raise AssertionError(f"order {body['token_id']} refused: {resp.status_code} {resp.text}")
    raise AssertionError(f"order {body['token_id']} never acknowledged")


async def collect_fills(redis_url: str, users: list[str], out: Outcome, stop: asyncio.Event) -> None:
    """Every fill event seen on the users' event channels; resubscribes after a lost connection."""
    while not stop.is_set():
        r = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1)
        ps = r.pubsub()
        try:
            await ps.subscribe(*[names.user_events_channel(u) for u in users])
            while not stop.is_set():
                m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if m is None or m["type"] != "message":
                    continue
                ev = orjson.loads(m["data"])
                user = m["channel"].decode().rsplit(":", 1)[1]
                out.fill_events.setdefault(user, []).extend(f["fill_id"] for f in ev.get("fills") or [])
        except Exception:  # Redis went away: resubscribe (what was published meanwhile is not seen)
            await asyncio.sleep(0.2)
        finally:
            with contextlib.suppress(Exception):
                await ps.aclose()
            with contextlib.suppress(Exception):
                await r.aclose()


async def move_touch(redis_url: str, stop: asyncio.Event) -> None:
    """The okx ask walks down and up between HIGH_ASK and LOW_ASK so that resting buys keep filling."""
    r = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    ask, step = HIGH_ASK, -100
    try:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await publish_bbo(r, "okx", str(ask - 500), str(ask))
            ask += step
            if ask <= LOW_ASK or ask >= HIGH_ASK:
                step = -step
            await asyncio.sleep(0.05)
    finally:
        await r.aclose()


async def open_tokens(r: aioredis.Redis, user: str) -> set[str]:
    return {t.decode() for t in await r.zrange(names.open_orders_key(user), 0, -1)}


async def burst_with_fault(st: Stack, fault: Callable[[], Awaitable[float]], *, users: int = 4,
                           per_client: int = 40, clients_per_user: int = 2, seed: int = 0) -> Outcome:
    """Deposit, then a burst of buys (limit: some marketable at once, most resting; every fifth an IOC that
    must fill) while the touch moves;
    ``fault()`` runs once a third of them are acknowledged and returns its recovery time. Then the ask drops
    below every price: every acknowledged order must fill. Ends with the full audit of every user."""
    rnd = random.Random(seed)
    names_ = [f"f{seed}u{i}" for i in range(users)]
    out = Outcome(acked={u: set() for u in names_})
    async with httpx.AsyncClient(base_url=st.url, timeout=5) as c:
        for u in names_:
            resp = await c.post("/deposit", json={"asset": "USDT", "amount": str(DEPOSIT)}, headers=st.headers(u))
            assert resp.status_code == 200, resp.text
    total = users * clients_per_user * per_client
    stop = asyncio.Event()
    async with feed_heartbeats(st.redis_url, "binance", "okx"):
        bg = [asyncio.create_task(collect_fills(st.redis_url, names_, out, stop)),
              asyncio.create_task(move_touch(st.redis_url, stop))]
        await asyncio.sleep(0.3)  # the collector is subscribed

        async def client(user: str, k: int) -> None:
            h = st.headers(user)
            async with httpx.AsyncClient(base_url=st.url, timeout=5) as c:
                for i in range(per_client):
                    token = f"{user}-{k}-{i}"
                    price = rnd.randrange(48_000, 49_600, 10)
                    body = {"token_id": token, "symbol": SYMBOL, "side": "buy", "price": price, "quantity": "0.001"}
                    if i % 5 == 4:  # an IOC above every ask of the walk: fills on arrival, or on recovery
                        body.update(type="ioc", price=HIGH_ASK + 100)
                    if await place(c, h, body, out, time.monotonic() + 60):
                        out.acked[user].add(token)

        tasks = [asyncio.create_task(client(u, k)) for u in names_ for k in range(clients_per_user)]
        try:
            await wait_for(lambda: _true(sum(map(len, out.acked.values())) >= total // 3), 60, "a third acked")
            out.recovery_s = await fault()
            await asyncio.wait_for(asyncio.gather(*tasks), 90)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stop.set()
            await asyncio.gather(*bg, return_exceptions=True)

        r = aioredis.Redis.from_url(st.redis_url)
        try:
            async def all_filled() -> bool:
                await publish_bbo(r, "okx", str(FINAL_ASK - 500), str(FINAL_ASK))
                for u in names_:
                    if await open_tokens(r, u):
                        return False
                return True
            await wait_for(all_filled, 60, "every acknowledged order to fill", every=0.3)
        finally:
            await r.aclose()
    assert sum(map(len, out.acked.values())) == total
    reports = await audit_users(st.redis_url, {u: {"USDT": DEPOSIT} for u in names_}, out.acked)
    for u, rep in reports.items():
        for t in out.acked[u]:
            assert rep.orders[t].status == "filled", f"{u}: {t} is {rep.orders[t].status}"
        in_redis = [f.fill_id for f in rep.fills]
        seen = out.fill_events.get(u, [])
        assert len(seen) == len(set(seen)), f"{u}: a fill event seen twice"
        assert set(seen) <= set(in_redis), f"{u}: fills seen but not in Redis: {sorted(set(seen) - set(in_redis))}"
        assert len(rep.fills) == len(out.acked[u])  # one fill per order, each in full
    return out


async def _true(v: bool) -> bool:
    return v


async def matcher_beat_after(st: Stack, t_us: int, within: float = 60) -> None:
    """Wait for a matcher heartbeat written after ``t_us``: a matcher (re)connected and serving."""
    r = aioredis.Redis.from_url(st.redis_url, socket_connect_timeout=1, socket_timeout=1)
    try:
        async def beat() -> bool:
            v = await r.get(names.MATCHER_ALIVE_KEY)
            return v is not None and int(v) > t_us
        await wait_for(beat, within, "a matcher heartbeat", every=0.1)
    finally:
        await r.aclose()


@contextlib.asynccontextmanager
async def sim_prices(sim: Any, tops: dict[str, tuple[str, str]], every_s: float = 0.25) -> AsyncIterator[None]:
    """Take BTCUSDT from the simulator's random walk and push ``tops[exchange] = (bid, ask)`` (mutable: change
    it to move a price) on both exchanges every ``every_s``; the other pairs keep walking."""
    sim.pause(SYMBOL)

    async def push() -> None:
        while True:
            for ex, (bid, ask) in list(tops.items()):
                with contextlib.suppress(Exception):
                    await sim.server(ex).push_bbo(SYMBOL, bid=bid, ask=ask, bid_qty="5", ask_qty="5")
            await asyncio.sleep(every_s)

    task = asyncio.create_task(push())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sim.resume(SYMBOL)


async def wait_feeds(st: Stack, live: set[str], within: float = 30) -> None:
    """Wait until the gateway's /ready reports exactly ``live`` as the live exchanges."""
    async with httpx.AsyncClient(base_url=st.url, timeout=2) as c:
        async def ok() -> bool:
            feeds = (await c.get("/ready")).json()["feeds"]
            return {ex for ex, f in feeds.items() if f["live"]} == live
        await wait_for(ok, within, f"live feeds to be {sorted(live)}", every=0.1)


async def last_ask(r: aioredis.Redis, exchange: str) -> Decimal | None:
    raw = await r.get(names.md_last_key("bbo", exchange, SYMBOL))
    return None if raw is None else Decimal(orjson.loads(raw)["ask_px"])
