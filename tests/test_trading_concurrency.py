"""Concurrency: one balance raced by 200 orders, one token_id submitted 50 times, one order cancelled 10 times at
once - over HTTP, and again straight on the store with no in-process lock, so only WATCH/MULTI stands guard."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D

import httpx
import pytest
import redis.asyncio as aioredis

from shared import ledger, ledger_store
from shared.errors import DomainError
from shared.ledger import PairRules
from tests.servers import make_settings, run_gateway
from tests.trading_helpers import auth

pytestmark = pytest.mark.asyncio


def body(token: str) -> dict[str, object]:
    return {"token_id": token, "symbol": "BTCUSDT", "side": "buy", "price": 50000, "quantity": 0.0002}  # 10 USDT


async def test_http_races(redis_url: str, aredis: aioredis.Redis) -> None:
    settings = make_settings(redis_url)
    h = auth(settings, "alice")
    limits = httpx.Limits(max_connections=200)
    # two gateway processes' worth of apps: their per-user locks are separate, so WATCH decides between them
    async with run_gateway(redis_url, settings) as b1, run_gateway(redis_url, settings) as b2, \
            httpx.AsyncClient(base_url=b1, limits=limits, timeout=30) as c1, \
            httpx.AsyncClient(base_url=b2, limits=limits, timeout=30) as c2:
        await c1.post("/deposit", json={"asset": "USDT", "amount": 1000}, headers=h)

        # 200 simultaneous orders, 10 USDT each, 1000 USDT: exactly 100 accepted
        rs = await asyncio.gather(*[(c1 if i % 2 else c2).post("/orders", json=body(f"t{i}"), headers=h)
                                    for i in range(200)])
        codes = [r.status_code for r in rs]
        assert codes.count(201) == 100 and codes.count(400) == 100, codes
        assert all(r.json()["code"] == "insufficient_balance" for r in rs if r.status_code == 400)
        bal = (await c1.get("/balance", headers=h)).json()
        assert bal["reserved"]["USDT"] == 1000 and bal["available"]["USDT"] == 0

        # 50 simultaneous submissions of one token_id: one order
        await c1.post("/deposit", json={"asset": "USDT", "amount": 1000}, headers=h)
        rs = await asyncio.gather(*[(c1 if i % 2 else c2).post("/orders", json=body("same"), headers=h)
                                    for i in range(50)])
        codes = [r.status_code for r in rs]
        assert codes.count(201) == 1 and codes.count(409) == 49, codes
        assert (await c1.get("/balance", headers=h)).json()["reserved"]["USDT"] == 1010

        # 10 simultaneous cancels: one releases, nine see it cancelled
        rs = await asyncio.gather(*[(c1 if i % 2 else c2).delete("/orders/same", headers=h) for i in range(10)])
        codes = [r.status_code for r in rs]
        assert codes.count(200) == 1 and codes.count(409) == 9, codes
        bal = (await c1.get("/balance", headers=h)).json()
        assert bal["reserved"]["USDT"] == 1000 and bal["available"]["USDT"] == 1000
    ledger.check_invariants(await ledger_store.get_account(aredis, "alice"),
                            await ledger_store.open_orders(aredis, "alice"))


async def test_store_races_without_the_lock(aredis: aioredis.Redis) -> None:
    rules = PairRules("BTCUSDT", "BTC", "USDT", D("0.01"), D("0.00001"))
    await ledger_store.deposit(aredis, "bob", "USDT", D("300"))

    async def place(i: int) -> bool:
        try:
            await ledger_store.place(aredis, rules, user_id="bob", token_id=f"t{i % 40}", side="buy", type_="limit",
                                     price=D("10"), quantity=D("1"), now_us=i)
            return True
        except DomainError as e:
            assert e.code in ("insufficient_balance", "duplicate_token_id")
            return False

    # 60 attempts on 40 distinct tokens for 30 orders' worth of funds
    ok = await asyncio.gather(*[place(i) for i in range(60)])
    assert sum(ok) == 30
    acct = await ledger_store.get_account(aredis, "bob")
    assert acct.get("USDT").reserved == D(300)

    opened = await ledger_store.open_orders(aredis, "bob")

    async def cancel(token: str) -> bool:
        try:
            await ledger_store.cancel(aredis, user_id="bob", token_id=token, now_us=1)
            return True
        except DomainError as e:
            assert e.code == "order_not_open"
            return False

    ok = await asyncio.gather(*[cancel(o.token_id) for o in opened for _ in range(3)])
    assert sum(ok) == 30
    acct = await ledger_store.get_account(aredis, "bob")
    assert acct.get("USDT").reserved == 0 and acct.get("USDT").total == D(300)
