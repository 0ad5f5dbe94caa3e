"""Fault injection on a stack of real processes under the real launcher (``tests/stack.py``): kill -9 of the
matcher, the gateway and Redis in the middle of a burst of orders and fills; Redis dropping every pub/sub
connection. After each: the services recover by themselves, the ledger audit holds for every user, every
acknowledged order is there and filled exactly once, every fill event a client saw is in Redis once.
The recovery times are printed (``pytest -s``). ``make soak-faults`` repeats these in a loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from shared.timeutil import now_us
from tests.faults import burst_with_fault, last_ask, matcher_beat_after, publish_bbo, sim_prices, wait_feeds
from tests.ledger_audit import audit_users
from tests.stack import Stack, feed_heartbeats, wait_for
from tests.wsclient import ws_client

pytestmark = pytest.mark.asyncio


async def kill_matcher(st: Stack) -> float:
    t0, t_us = time.monotonic(), now_us()
    old = st.kill9("matcher")
    await st.wait_restarted("matcher", old)
    await matcher_beat_after(st, t_us)
    return time.monotonic() - t0


async def kill_gateway(st: Stack) -> float:
    t0 = time.monotonic()
    old = st.kill9("gateway")
    await st.wait_restarted("gateway", old)
    async with httpx.AsyncClient(base_url=st.url, timeout=2) as c:
        async def serves() -> bool:
            return (await c.get("/balance", headers=st.headers("probe"))).status_code == 200
        await wait_for(serves, 60, "the restarted gateway to serve")
    return time.monotonic() - t0


async def kill_redis(st: Stack) -> float:
    t0, t_us = time.monotonic(), now_us()
    old = st.kill9("redis")
    await st.wait_redis_back(old)
    async with httpx.AsyncClient(base_url=st.url, timeout=2) as c:
        async def serves() -> bool:
            return (await c.get("/balance", headers=st.headers("probe"))).status_code == 200
        await wait_for(serves, 60, "the gateway to reach the restarted Redis")
    await matcher_beat_after(st, t_us)
    return time.monotonic() - t0


FAULTS = {"matcher": kill_matcher, "gateway": kill_gateway, "redis": kill_redis}


@pytest.mark.timeout(240)
async def test_kill9_during_a_burst(tmp_path: Path) -> None:
    """One stack, three crashes in turn, each during its own burst of orders and fills."""
    async with Stack(tmp_path) as st:
        for i, (name, fault) in enumerate(FAULTS.items()):
            out = await burst_with_fault(st, lambda f=fault: f(st), seed=i)
            print(f"kill -9 {name}: recovered in {out.recovery_s:.2f}s; {out.retries} client retries; "
                  f"{sum(map(len, out.acked.values()))} orders acked and filled; "
                  f"{sum(map(len, out.fill_events.values()))} fill events seen")


async def test_redis_drops_every_pubsub_connection(tmp_path: Path) -> None:
    """``CLIENT KILL TYPE pubsub``: the gateway's and the matcher's subscriptions come back by themselves; a
    WebSocket client keeps getting best touch and its order events."""
    async with Stack(tmp_path) as st, feed_heartbeats(st.redis_url, "binance", "okx"):
        r = aioredis.Redis.from_url(st.redis_url)
        try:
            async with ws_client(st.url, tok=st.token("pk")) as ws, \
                    httpx.AsyncClient(base_url=st.url, timeout=5) as c:
                h = st.headers("pk")
                assert (await c.post("/deposit", json={"asset": "USDT", "amount": 10000}, headers=h)).status_code == 200
                await ws.subscribe(stream="best_touch", symbol="BTCUSDT", exchange="all")
                await ws.subscribe(stream="orders")
                await publish_bbo(r, "okx", "49000", "49500")
                await ws.until(lambda m: m["type"] == "best_touch" and m["data"]["ask_px"] == 49500, 10)
                body = {"token_id": "rest1", "symbol": "BTCUSDT", "side": "buy", "price": 49000, "quantity": 0.001}
                assert (await c.post("/orders", json=body, headers=h)).status_code == 201
                await ws.until(lambda m: m["type"] == "order" and m["data"]["event"] == "accepted", 10)

                killed = await r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                assert killed >= 2, killed  # at least the gateway's market data and the matcher's
                t0 = time.monotonic()
                # order events published while the gateway resubscribed are gone: the client is told so
                resync = await ws.until(lambda m: m["type"] == "resync", 20)
                assert resync["topic"] == "orders" and "GET /orders" in resync["data"]["reason"], resync

                async def touch_back() -> bool:
                    await publish_bbo(r, "okx", "48900", "49400")
                    with contextlib.suppress(TimeoutError):
                        await ws.until(lambda m: m["type"] == "best_touch" and m["data"]["ask_px"] == 49400, 0.5)
                        return True
                    return False
                await wait_for(touch_back, 20, "best touch after the pub/sub connections were killed")
                touch_s = time.monotonic() - t0

                async def filled() -> bool:
                    await publish_bbo(r, "okx", "48500", "48900")
                    with contextlib.suppress(TimeoutError):
                        await ws.until(lambda m: m["type"] == "order" and m["data"]["event"] == "filled", 0.5)
                        return True
                    return False
                await wait_for(filled, 20, "the fill event after the pub/sub connections were killed")
                print(f"CLIENT KILL TYPE pubsub ({killed} connections): best touch back in {touch_s:.2f}s, "
                      f"fill event in {time.monotonic() - t0:.2f}s")
                o = (await c.get("/orders/rest1", headers=h)).json()
                assert o["status"] == "filled" and o["average_price"] == 49000, o
            await audit_users(st.redis_url, {"pk": {"USDT": Decimal(10000)}}, {"pk": {"rest1"}})
        finally:
            await r.aclose()


STALE_S = 2.0  # feeds.stale_after_s of the ingestor tests: short, so that going stale takes little time


async def _place(c: httpx.AsyncClient, h: dict[str, str], token: str, side: str, price: object = None,
                 qty: str = "0.001", type_: str = "limit") -> dict[str, object]:
    body: dict[str, object] = {"token_id": token, "symbol": "BTCUSDT", "side": side, "quantity": qty, "type": type_}
    if price is not None:
        body["price"] = price
    resp = await c.post("/orders", json=body, headers=h)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def _fills_of(c: httpx.AsyncClient, h: dict[str, str], token: str) -> list[dict[str, str]]:
    return [f for f in (await c.get("/fills", headers=h)).json()["fills"] if f["token_id"] == token]


@pytest.mark.timeout(120)
async def test_sigstop_ingestor_past_staleness_no_fill_on_its_price(tmp_path: Path) -> None:
    """SIGSTOP the okx ingestor while okx has the best ask: once its feed is stale no order fills on that price,
    not even a limit order it would cross; a market order takes binance's fresh one. After SIGCONT the feed
    comes back by itself and the resting order fills on okx's fresh price."""
    async with Stack(tmp_path, ingestors=True, stale_after_s=STALE_S) as st, \
            httpx.AsyncClient(base_url=st.url, timeout=5) as c:
        assert st.sim is not None
        r = aioredis.Redis.from_url(st.redis_url)
        h = st.headers("stale")
        tops = {"okx": ("49000", "49100"), "binance": ("49000", "49600")}
        try:
            async with sim_prices(st.sim, tops):
                assert (await c.post("/deposit", json={"asset": "USDT", "amount": 1000}, headers=h)).status_code == 200
                await wait_feeds(st, {"binance", "okx"})
                await wait_for(lambda: _eq(last_ask(r, "okx"), Decimal("49100")), 20, "okx's 49100 ask")
                await wait_for(lambda: _eq(last_ask(r, "binance"), Decimal("49600")), 20, "binance's 49600 ask")
                with st.stopped("ingestor-okx"):
                    t0 = time.monotonic()
                    await wait_feeds(st, {"binance"}, within=STALE_S + 20)
                    await asyncio.sleep(1.0)  # the matcher follows the same heartbeats with the same limit
                    rest = await _place(c, h, "stale-limit", "buy", 49200)
                    assert rest["status"] == "open"
                    mkt = await _place(c, h, "fresh-market", "buy", type_="market")
                    assert mkt["status"] == "filled", mkt
                    assert [(f["exchange"], f["price"]) for f in mkt["fills"]] == [("binance", 49600)], mkt
                    await asyncio.sleep(1.0)
                    assert (await c.get("/orders/stale-limit", headers=h)).json()["status"] == "open"
                    assert await _fills_of(c, h, "stale-limit") == []
                stale_s = time.monotonic() - t0
                t1 = time.monotonic()
                await wait_feeds(st, {"binance", "okx"}, within=30)
                o = await wait_order(c, h, "stale-limit", "filled", 30)
                assert o["average_price"] == 49200  # a resting order fills at its limit price
                assert [f["exchange"] for f in await _fills_of(c, h, "stale-limit")] == ["okx"]
                print(f"SIGSTOP ingestor-okx {stale_s:.1f}s: no fill on its stale price; after SIGCONT feed live "
                      f"and the order filled in {time.monotonic() - t1:.2f}s")
            await audit_users(st.redis_url, {"stale": {"USDT": Decimal(1000)}},
                              {"stale": {"stale-limit", "fresh-market"}})
        finally:
            await r.aclose()


@pytest.mark.timeout(150)
async def test_simulator_faults_during_resting_orders(tmp_path: Path) -> None:
    """Crossed books, garbage of every kind, dropped connections and a stall on both exchanges while orders
    rest: nothing fills on a crossed or garbage price, the ingestors recover by themselves, and the orders fill
    on the fresh prices afterwards."""
    async with Stack(tmp_path, ingestors=True, stale_after_s=STALE_S) as st, \
            httpx.AsyncClient(base_url=st.url, timeout=5) as c:
        sim = st.sim
        assert sim is not None
        h = st.headers("simf")
        tops = {"okx": ("49000", "49300"), "binance": ("48900", "49400")}
        async with sim_prices(sim, tops):
            for asset, amount in (("USDT", 1000), ("BTC", "0.01")):
                resp = await c.post("/deposit", json={"asset": asset, "amount": amount}, headers=h)
                assert resp.status_code == 200, resp.text
            await wait_feeds(st, {"binance", "okx"})
            # a crossed okx book (bid = ask + 2 ticks = 49300.02) would fill this sell; binance's crossed book
            # (bid 49400.02) would fill both
            await _place(c, h, "sell", "sell", "49300.01")
            await _place(c, h, "buy", "buy", "49250")
            t0 = time.monotonic()
            for _ in range(3):
                for ex in ("okx", "binance"):
                    await sim.server(ex).send_crossed_book("BTCUSDT")
                    for kind in ("non_json", "truncated", "nan", "nan_literal", "negative", "empty"):
                        await sim.server(ex).send_garbage(kind, "BTCUSDT")
                await asyncio.sleep(0.3)
            await sim.okx.abrupt_close_all()
            await sim.binance.drop_all(code=1000)
            await wait_feeds(st, {"binance", "okx"}, within=40)  # both reconnected
            sim.okx.go_silent(STALE_S + 4)  # open socket, nothing sent: okx goes stale, then comes back
            await wait_feeds(st, {"binance"}, within=STALE_S + 4)
            await wait_feeds(st, {"binance", "okx"}, within=40)
            recovered_s = time.monotonic() - t0
            for token in ("sell", "buy"):
                o = (await c.get(f"/orders/{token}", headers=h)).json()
                assert o["status"] == "open", o
            assert (await c.get("/fills", headers=h)).json()["fills"] == []
            tops["okx"] = ("49000", "49200")  # a fresh, sane ask under the buy's limit
            o = await wait_order(c, h, "buy", "filled", 30)
            assert o["average_price"] == 49250
            tops["binance"] = ("49400", "49500")  # a fresh bid above the sell's limit
            o = await wait_order(c, h, "sell", "filled", 30)
            assert o["average_price"] == 49300.01
            print(f"simulator crossed books, garbage, drops, stall: no fill; feeds live again after "
                  f"{recovered_s:.2f}s; fills on fresh prices")
        await audit_users(st.redis_url, {"simf": {"USDT": Decimal(1000), "BTC": Decimal("0.01")}},
                          {"simf": {"sell", "buy"}})


async def wait_order(c: httpx.AsyncClient, h: dict[str, str], token: str, status: str,
                     within: float) -> dict[str, object]:
    last: dict[str, object] = {}

    async def done() -> bool:
        nonlocal last
        last = (await c.get(f"/orders/{token}", headers=h)).json()
        return last.get("status") == status
    try:
        await wait_for(done, within, f"{token} to be {status}", every=0.1)
    except AssertionError:
        raise AssertionError(f"{token} is {last.get('status')}, expected {status}: {last}") from None
    return last


async def _eq(v: Awaitable[object], want: object) -> bool:
    return await v == want
