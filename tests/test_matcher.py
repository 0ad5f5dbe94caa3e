"""The matcher over real Redis with the gateway over real HTTP: fills on arrival and later, market/IOC
partial fills, stale exchanges, fees, events, races with cancel/modify, two matchers, orders placed while down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal as D
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from shared import ledger, ledger_store
from shared.settings import Settings
from tests.servers import make_settings, run_gateway
from tests.trading_helpers import (
    auth,
    events,
    matcher,
    publish_bbo,
    publish_book,
    publish_status,
    wait_status,
    wait_until,
)

pytestmark = pytest.mark.asyncio


def fee_settings(redis_url: str) -> Settings:
    s = make_settings(redis_url)
    pairs = tuple(p.model_copy(update={"maker_fee": D("0.001"), "taker_fee": D("0.002")}) if p.symbol == "BTCUSDT"
                  else p for p in s.pairs)
    return s.model_copy(update={"pairs": pairs})


Api = tuple[httpx.AsyncClient, Settings, aioredis.Redis]


@pytest.fixture
async def api(redis_url: str, aredis: aioredis.Redis) -> AsyncIterator[Api]:
    settings = fee_settings(redis_url)
    settings.model_post_init(None)
    async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base) as c:
        yield c, settings, aredis


async def fund(c: httpx.AsyncClient, h: dict[str, str], **amounts: str) -> None:
    for asset, amt in amounts.items():
        assert (await c.post("/deposit", json={"asset": asset, "amount": amt}, headers=h)).status_code == 200


async def check_ledger(r: aioredis.Redis, user: str) -> None:
    ledger.check_invariants(await ledger_store.get_account(r, user), await ledger_store.open_orders(r, user))


async def test_resting_buy_fills_at_limit_when_ask_crosses(api: Api, redis_url: str) -> None:
    c, settings, r = api
    h = auth(settings, "alice")
    await fund(c, h, USDT="1000")
    await publish_bbo(r, "binance", "BTCUSDT", "50100", "50200")
    async with matcher(settings, redis_url), events(redis_url, "alice") as evs:
        o = (await c.post("/orders", json={"token_id": "b1", "symbol": "BTCUSDT", "side": "buy", "price": "50000",
                                           "quantity": "0.01"}, headers=h)).json()
        assert o["status"] == "open"
        await asyncio.sleep(0.1)
        assert (await c.get("/orders/b1", headers=h)).json()["status"] == "open"
        await publish_bbo(r, "okx", "BTCUSDT", "49900", "49990")  # okx ask crosses 50000
        o = await wait_status(c, "b1", "filled", h)
    assert o["average_price"] == 50000 and o["filled_quantity"] == 0.01 and o["exchanges"] == ["okx"]
    assert o["fee"] == 0.00001 and o["fee_asset"] == "BTC" and o["reserved"] == 0  # maker 0.1% in BTC
    bal = (await c.get("/balance", headers=h)).json()
    assert bal["total"]["USDT"] == 500 and bal["reserved"]["USDT"] == 0 and bal["total"]["BTC"] == 0.00999
    fills = (await c.get("/fills", headers=h)).json()
    assert fills["total"] == 1
    f = fills["fills"][0]
    assert (f["token_id"], f["price"], f["quantity"], f["fee"], f["exchange"], f["liquidity"]) == (
        "b1", 50000, 0.01, 0.00001, "okx", "maker")
    assert [e["event"] for e in evs] == ["accepted", "filled"]
    assert evs[1]["order"]["status"] == "filled" and evs[1]["fills"][0]["price"] == "50000"
    await check_ledger(r, "alice")


async def test_marketable_on_arrival_fills_at_touch(api: Api, redis_url: str) -> None:
    c, settings, r = api
    h = auth(settings, "alice")
    await fund(c, h, USDT="1000", BTC="1")
    async with matcher(settings, redis_url):
        await publish_bbo(r, "binance", "BTCUSDT", "49000", "49500")
        await publish_bbo(r, "okx", "BTCUSDT", "49100", "49600")
        await asyncio.sleep(0.05)
        await c.post("/orders", json={"token_id": "b", "symbol": "BTCUSDT", "side": "buy", "price": 50000,
                                      "quantity": 0.01}, headers=h)
        await c.post("/orders", json={"token_id": "s", "symbol": "BTCUSDT", "side": "sell", "price": 48000,
                                      "quantity": 0.1}, headers=h)
        b = await wait_status(c, "b", "filled", h)
        s = await wait_status(c, "s", "filled", h)
    assert b["average_price"] == 49500 and b["exchanges"] == ["binance"] and b["fee"] == 0.00002  # taker 0.2%
    assert s["average_price"] == 49100 and s["exchanges"] == ["okx"] and s["fee"] == 9.82
    bal = (await c.get("/balance", headers=h)).json()
    # 1000 - 495 + 4910 - 9.82 ; BTC 1 + 0.01 - 0.00002 - 0.1
    assert bal["total"]["USDT"] == 5405.18 and bal["total"]["BTC"] == 0.90998
    assert bal["reserved"] == {k: 0 for k in bal["reserved"]}
    await check_ledger(r, "alice")


async def test_down_or_silent_exchange_is_ignored(api: Api, redis_url: str) -> None:
    c, settings, r = api
    h = auth(settings, "alice")
    await fund(c, h, BTC="1")
    async with matcher(settings, redis_url, live=("binance",)):
        await c.post("/orders", json={"token_id": "s", "symbol": "BTCUSDT", "side": "sell", "price": 60000,
                                      "quantity": 0.1}, headers=h)
        await publish_bbo(r, "okx", "BTCUSDT", "61000", "61001")  # okx never said "up"
        await publish_status(r, "binance", "down")
        await publish_bbo(r, "binance", "BTCUSDT", "61000", "61001")
        await asyncio.sleep(0.2)
        assert (await c.get("/orders/s", headers=h)).json()["status"] == "open"
        await publish_status(r, "binance", "up")  # back up: the standing quote now crosses
        s = await wait_status(c, "s", "filled", h)
    assert s["average_price"] == 60000 and s["exchanges"] == ["binance"]


async def test_market_and_ioc_walk_both_books_and_expire_remainder(api: Api, redis_url: str) -> None:
    c, settings, r = api
    h = auth(settings, "alice")
    await fund(c, h, USDT="100000", BTC="1")
    async with matcher(settings, redis_url):
        await publish_book(r, "binance", "BTCUSDT", [("49990", "0.2"), ("49980", "1")], [("50010", "0.1"), ("50030", "1")])
        await publish_book(r, "okx", "BTCUSDT", [("49995", "0.1"), ("49900", "1")], [("50000", "0.05"), ("50020", "0.1")])
        await publish_bbo(r, "binance", "BTCUSDT", "49990", "50010", "0.2", "0.1")
        await publish_bbo(r, "okx", "BTCUSDT", "49995", "50000", "0.1", "0.05")
        await asyncio.sleep(0.05)
        async with events(redis_url, "alice") as evs:
            # market buy 1 BTC: 0.05@50000 okx, 0.1@50010 bnb, 0.1@50020 okx, 0.75@50030 bnb (1 shown) -> fills all
            await c.post("/orders", json={"token_id": "m", "symbol": "BTCUSDT", "side": "buy", "type": "market",
                                          "quantity": 1}, headers=h)
            m = await wait_status(c, "m", "filled", h)
            # IOC sell 0.5 at >= 49985: 0.1@49995 okx, 0.2@49990 binance, then 49980 is below the limit
            await c.post("/orders", json={"token_id": "i", "symbol": "BTCUSDT", "side": "sell", "type": "ioc",
                                          "price": 49985, "quantity": 0.5}, headers=h)
            i = await wait_status(c, "i", "expired", h)
            await wait_until(lambda: _n(evs, 4), what="events")
    assert m["filled_quantity"] == 1 and m["exchanges"] == ["okx", "binance"]
    # 2500 + 5001 + 5002 + 37522.5 = 50025.5
    assert m["filled_notional"] == 50025.5 and m["average_price"] == 50025.5
    assert i["filled_quantity"] == 0.3 and i["filled_notional"] == 14997.5 and i["reason"] == "remainder expired"
    assert [e["event"] for e in evs] == ["accepted", "filled", "accepted", "expired"]
    assert len(evs[3]["fills"]) == 2
    fills = (await c.get("/fills?limit=3", headers=h)).json()
    assert fills["total"] == 6 and len(fills["fills"]) == 3 and fills["fills"][0]["token_id"] == "i"
    await check_ledger(r, "alice")


async def _n(evs: list[Any], n: int) -> bool:
    return len(evs) >= n


async def test_market_buy_limited_by_funds_and_no_price_rejected(api: Api, redis_url: str) -> None:
    c, settings, r = api
    h = auth(settings, "alice")
    await fund(c, h, USDT="1000")
    async with matcher(settings, redis_url, live=()):
        await c.post("/orders", json={"token_id": "dead", "symbol": "BTCUSDT", "side": "buy", "type": "market",
                                      "quantity": 1}, headers=h)
        d = await wait_status(c, "dead", "rejected", h)
        assert d["reason"] == "no live price"
        await publish_status(r, "okx")
        await publish_bbo(r, "okx", "BTCUSDT", "49000", "50000", "1", "1")
        await asyncio.sleep(0.05)
        await c.post("/orders", json={"token_id": "m", "symbol": "BTCUSDT", "side": "buy", "type": "market",
                                      "quantity": 1}, headers=h)
        m = await wait_status(c, "m", "expired", h)
    assert m["filled_quantity"] == 0.02 and m["filled_notional"] == 1000
    bal = (await c.get("/balance", headers=h)).json()
    assert bal["total"]["USDT"] == 0 and bal["reserved"]["USDT"] == 0
    await check_ledger(r, "alice")


async def test_ioc_arriving_before_the_feeds_are_heard_waits_for_them(api: Api, redis_url: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Just after a (re)start the matcher has heard no feed yet (after a Redis restart they are all stale): an IOC
    arriving then waits for the feeds, up to the grace period, instead of expiring for want of a price."""
    from matcher import engine

    monkeypatch.setattr(engine, "STARTUP_GRACE_S", 30.0)  # the window, made wide for a loaded machine
    c, settings, r = api
    h = auth(settings, "alice")
    await fund(c, h, USDT="1000")
    async with matcher(settings, redis_url, live=()):
        body = {"token_id": "i", "symbol": "BTCUSDT", "side": "buy", "type": "ioc", "price": 50000, "quantity": 0.01}
        assert (await c.post("/orders", json=body, headers=h)).status_code == 201
        await asyncio.sleep(0.3)
        assert (await c.get("/orders/i", headers=h)).json()["status"] == "open"  # waiting, not expired
        await publish_bbo(r, "okx", "BTCUSDT", "49000", "49500")
        await publish_bbo(r, "binance", "BTCUSDT", "49000", "49600")
        for ex in ("binance", "okx"):
            await publish_status(r, ex)
        i = await wait_status(c, "i", "filled", h)
    assert i["average_price"] == 49500 and i["exchanges"] == ["okx"]
    await check_ledger(r, "alice")


async def test_modify_into_the_market_fills_at_once(api: Api, redis_url: str) -> None:
    c, settings, r = api
    h = auth(settings, "alice")
    await fund(c, h, USDT="1000")
    async with matcher(settings, redis_url):
        await publish_bbo(r, "okx", "BTCUSDT", "49000", "49500")
        await c.post("/orders", json={"token_id": "b", "symbol": "BTCUSDT", "side": "buy", "price": 49000,
                                      "quantity": 0.01}, headers=h)
        await asyncio.sleep(0.1)
        assert (await c.get("/orders/b", headers=h)).json()["status"] == "open"
        assert (await c.put("/orders/b", json={"price": 49600}, headers=h)).status_code == 200
        b = await wait_status(c, "b", "filled", h)
    assert b["average_price"] == 49500 and b["price"] == 49600
    await check_ledger(r, "alice")


async def test_order_placed_while_matcher_down_executes_on_start(api: Api, redis_url: str) -> None:
    c, settings, r = api
    h = auth(settings, "alice")
    await fund(c, h, USDT="2000", BTC="1")
    await c.post("/orders", json={"token_id": "b", "symbol": "BTCUSDT", "side": "buy", "price": 50000,
                                  "quantity": 0.01}, headers=h)
    await c.post("/orders", json={"token_id": "m", "symbol": "BTCUSDT", "side": "sell", "type": "market",
                                  "quantity": 0.01}, headers=h)
    await publish_bbo(r, "okx", "BTCUSDT", "49900", "49950")  # snapshot left by the ingestor
    async with matcher(settings, redis_url):
        b = await wait_status(c, "b", "filled", h)
        m = await wait_status(c, "m", "filled", h)
    assert b["average_price"] == 50000  # found resting: its own limit price
    assert m["average_price"] == 49900
    await check_ledger(r, "alice")


async def test_two_matchers_fill_each_order_once(api: Api, redis_url: str) -> None:
    c, settings, r = api
    users = [f"u{i}" for i in range(5)]
    for u in users:
        await fund(c, auth(settings, u), USDT="10000")
    async with matcher(settings, redis_url), matcher(settings, redis_url):
        await publish_bbo(r, "okx", "BTCUSDT", "49000", "51000")
        for u in users:
            for k in range(4):
                resp = await c.post("/orders", json={"token_id": f"t{k}", "symbol": "BTCUSDT", "side": "buy",
                                                     "price": 50000 - k, "quantity": 0.01}, headers=auth(settings, u))
                assert resp.status_code == 201
        await asyncio.sleep(0.1)
        for px in ("50000", "49999", "49998", "49997"):
            await publish_bbo(r, "okx", "BTCUSDT", "49000", px)
        for u in users:
            for k in range(4):
                await wait_status(c, f"t{k}", "filled", auth(settings, u))
    for u in users:
        fills = (await c.get("/fills", headers=auth(settings, u))).json()
        assert fills["total"] == 4
        bal = (await c.get("/balance", headers=auth(settings, u))).json()
        # 10000 - 0.01 * (50000 + 49999 + 49998 + 49997)
        assert bal["total"]["USDT"] == 8000.06 and bal["total"]["BTC"] == 0.03996
        await check_ledger(r, u)


async def test_cancel_and_modify_race_with_fills(api: Api, redis_url: str) -> None:
    c, settings, r = api
    h = auth(settings, "alice")
    await fund(c, h, USDT="100000")
    n = 40
    async with matcher(settings, redis_url):
        await publish_bbo(r, "okx", "BTCUSDT", "40000", "60000")
        for k in range(n):
            await c.post("/orders", json={"token_id": f"t{k}", "symbol": "BTCUSDT", "side": "buy", "price": 50000,
                                          "quantity": 0.01}, headers=h)
        await asyncio.sleep(0.1)

        async def cancel(k: int) -> int:
            return (await c.delete(f"/orders/t{k}", headers=h)).status_code

        async def modify(k: int) -> int:
            return (await c.put(f"/orders/t{k}", json={"quantity": 0.02}, headers=h)).status_code

        ops = [cancel(k) if k % 2 else modify(k) for k in range(n)]
        results = await asyncio.gather(publish_bbo(r, "okx", "BTCUSDT", "40000", "49999"), *ops)
        codes = results[1:]
        assert set(codes) <= {200, 409}
        await wait_until(lambda: _no_open(c, h), what="no open orders")
    orders = (await c.get("/orders?limit=500", headers=h)).json()["orders"]
    fills = (await c.get("/fills?limit=500", headers=h)).json()["fills"]
    filled = {o["token_id"]: o for o in orders if o["status"] == "filled"}
    assert {f["token_id"] for f in fills} == set(filled) and len(fills) == len(filled)
    for k in range(n):
        o = next(x for x in orders if x["token_id"] == f"t{k}")
        assert o["status"] in ("filled", "cancelled")
        if k % 2 and codes[k] == 200:
            assert o["status"] == "cancelled"
        if k % 2 == 0 and codes[k] == 200:
            assert o["status"] == "filled" and o["quantity"] == 0.02  # modified, then filled at its size
    spent = sum((D(o["filled_notional"]) for o in filled.values()), D(0))
    bal = (await c.get("/balance", headers=h)).json()
    assert D(str(bal["total"]["USDT"])) == D(100000) - spent and bal["reserved"]["USDT"] == 0
    await check_ledger(r, "alice")


async def _no_open(c: httpx.AsyncClient, h: dict[str, str]) -> bool:
    return (await c.get("/orders?status=open", headers=h)).json()["total"] == 0
