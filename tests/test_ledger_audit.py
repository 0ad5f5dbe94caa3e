"""The audit used by the robustness tests: it passes on a ledger built by the real store, and catches each kind of
damage (a lost order, a fill applied twice, money from nowhere, a stale open index)."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from shared import ledger_store, names
from shared.ledger import Leg, PairRules
from shared.matching import Decision
from tests.ledger_audit import audit

pytestmark = pytest.mark.asyncio

RULES = PairRules("BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.00001"), maker_fee=Decimal("0.001"), taker_fee=Decimal("0.002"))
D = Decimal


async def build(r: aioredis.Redis) -> None:
    await ledger_store.deposit(r, "u1", "USDT", D(10000))
    await ledger_store.deposit(r, "u1", "BTC", D(1))
    for token, side, px in (("b1", "buy", "50000"), ("s1", "sell", "51000"), ("rest", "buy", "40000"),
                            ("gone", "sell", "60000")):
        await ledger_store.place(r, RULES, user_id="u1", token_id=token, side=side, type_="limit", price=D(px),
                                 quantity=D("0.1"), now_us=1)
    for token, px in (("b1", "49990.5"), ("s1", "51000.25")):
        fill = Decision("fill", (Leg(D(px), D("0.04"), "okx"), Leg(D(px), D("0.06"), "binance")))
        await ledger_store.execute(r, RULES, user_id="u1", token_id=token, decide=lambda o, d=fill: d,
                                   now_us=lambda: 2)
    await ledger_store.cancel(r, user_id="u1", token_id="gone", now_us=3)


async def test_a_sound_ledger_passes(aredis: aioredis.Redis) -> None:
    await build(aredis)
    rep = await audit(aredis, "u1", {"USDT": D(10000), "BTC": D(1)}, acked={"b1", "s1", "rest", "gone"})
    assert rep.by_status() == {"filled": 2, "open": 1, "cancelled": 1}
    assert len(rep.fills) == 4


@pytest.mark.parametrize("damage", ["lost_order", "fill_twice", "free_money", "stale_open", "wrong_deposits"])
async def test_damage_is_caught(aredis: aioredis.Redis, damage: str) -> None:
    await build(aredis)
    deposits = {"USDT": D(10000), "BTC": D(1)}
    acked = {"b1", "s1", "rest", "gone"}
    if damage == "lost_order":
        acked.add("never-written")
    elif damage == "fill_twice":
        first = await aredis.lindex(names.fills_key("u1"), 0)
        await aredis.rpush(names.fills_key("u1"), first)
    elif damage == "free_money":
        await aredis.hincrbyfloat(names.balance_key("u1"), "t:USDT", 1)
    elif damage == "stale_open":
        await aredis.zadd(names.open_orders_key("u1"), {"b1": 1})
    else:
        deposits["BTC"] = D(2)
    with pytest.raises(AssertionError):
        await audit(aredis, "u1", deposits, acked)
