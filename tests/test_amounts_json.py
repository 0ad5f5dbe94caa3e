"""One representation for amounts: every REST and WebSocket amount is a JSON number whose text is the exact
decimal, and a client written straight from the product statement (plain ``json``, floats, routing by
``topic``) runs unchanged. Checked on the raw response bytes, over real HTTP and WebSocket connections."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from gateway.jsonio import number
from shared.money import MAX_AMOUNT, fmt
from shared.settings import Settings
from tests.servers import make_settings, run_gateway
from tests.trading_helpers import auth
from tests.wsclient import token, ws_client

pytestmark = pytest.mark.asyncio


def exact(raw: bytes) -> Any:
    return json.loads(raw, parse_float=Decimal)


def number_text(raw: bytes, key: str) -> list[str]:
    """The raw text of every ``"key": <number>`` in ``raw`` (fails on a string value)."""
    found = re.findall(rb'"' + key.encode() + rb'":(-?[0-9.eE+-]+|"[^"]*"|null)', raw)
    assert found, f"{key} not in {raw[:300]!r}"
    for f in found:
        assert not f.startswith(b'"'), f"{key} is a string: {f!r}"
    return [f.decode() for f in found]


@pytest.fixture
async def gw(redis_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Settings, str]]:
    settings = make_settings(redis_url)
    async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base) as c:
        yield c, settings, base


async def test_info_rules_round_trip_digit_for_digit(gw) -> None:  # type: ignore[no-untyped-def]
    c, settings, _ = gw
    raw = (await c.get("/info")).content
    info = exact(raw)
    for key in ("tick_size", "lot_step", "min_notional", "maker_fee", "taker_fee"):
        texts = number_text(raw, key)
        want = [orjson.dumps(number(getattr(p, key))).decode() for p in settings.pairs]  # the digits as configured
        assert texts == want, key
    for p, s in zip(settings.pairs, info["symbols"], strict=True):
        assert Decimal(s["tick_size"]) == p.tick_size and Decimal(s["lot_step"]) == p.lot_step


async def test_largest_and_smallest_amounts_round_trip(gw) -> None:  # type: ignore[no-untyped-def]
    c, settings, _ = gw
    a = auth(settings, "exact")
    # The largest deposit, at the quote's finest precision: 12 + 7 digits, beyond any float.
    big = "999999999999.9999999"
    raw = (await c.post("/deposit", content=f'{{"asset": "USDT", "amount": {big}}}',
                        headers={**a, "Content-Type": "application/json"})).content
    assert number_text(raw, "USDT")[0] == big
    btc = next(p for p in settings.pairs if p.symbol == "BTCUSDT")
    # Smallest price (one tick) with a huge quantity (many lots): every digit kept in the answer.
    qty = "99999999999.99999"
    body = f'{{"token_id": "tiny", "symbol": "BTCUSDT", "side": "buy", "price": {fmt(btc.tick_size)}, "quantity": {qty}}}'
    r = await c.post("/orders", content=body, headers={**a, "Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert number_text(r.content, "price") == [fmt(btc.tick_size)]
    assert number_text(r.content, "quantity") == [qty]
    assert number_text(r.content, "reserved") == [fmt(btc.tick_size * Decimal(qty) * (1 + btc.taker_fee))]
    # The smallest quantity (one lot) at the largest price the API takes (just under MAX_AMOUNT).
    await c.post("/deposit", json={"asset": "BTC", "amount": fmt(btc.lot_step)}, headers=a)
    price = fmt(MAX_AMOUNT - btc.tick_size)
    body = f'{{"token_id": "huge", "symbol": "BTCUSDT", "side": "sell", "price": {price}, "quantity": {fmt(btc.lot_step)}}}'
    r = await c.post("/orders", content=body, headers={**a, "Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert number_text(r.content, "price") == [price] and number_text(r.content, "reserved") == [fmt(btc.lot_step)]
    bal = exact((await c.get("/balance", headers=a)).content)
    reserved = btc.tick_size * Decimal(qty) * (1 + btc.taker_fee)
    assert bal["total"]["USDT"] == Decimal(big) and bal["available"]["USDT"] == Decimal(big) - reserved
    listed = exact((await c.get("/orders", headers=a)).content)
    assert [o["quantity"] for o in listed["orders"]] == [btc.lot_step, Decimal(qty)]


async def test_a_client_written_from_the_statement_runs_unchanged(gw) -> None:  # type: ignore[no-untyped-def]
    """Plain ``json`` (floats), formatting and comparing amounts as numbers, as the statement shows them."""
    c, settings, base = gw
    a = auth(settings, "plain")
    data = (await c.post("/deposit", json={"asset": "USDT", "amount": 1000}, headers=a)).json()
    assert f"{data['available']['USDT']:.2f}" == "1000.00"
    r = await c.post("/orders", json={"token_id": "p1", "symbol": "BTCUSDT", "side": "buy", "price": 50000,
                                      "quantity": 0.01}, headers=a)
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["price"] == 50000 and order["quantity"] == 0.01 and order["status"] == "open"
    balance = (await c.get("/balance", headers=a)).json()
    assert balance["available"]["USDT"] >= 500 and balance["reserved"]["USDT"] == 500
    assert balance["total"]["USDT"] - balance["reserved"]["USDT"] == balance["available"]["USDT"]
    got = (await c.get("/orders/p1", headers=a)).json()
    assert isinstance(got["quantity"], float) and isinstance(got["filled_quantity"], int)

    # The WebSocket, routed by ``topic``: replies never carry one, so a reply is never taken for data.
    async with ws_client(base, tok=token("plain")) as ws:
        for sub in ({"stream": "ewma", "symbol": "SOLUSDT", "half_life": 30, "exchange": "all"},
                    {"stream": "best_touch", "symbol": "BTCUSDT", "exchange": "all"},
                    {"stream": "orders"}):
            ack = await ws.subscribe(**sub)
            assert "topic" not in ack and ack["subscription"]
        pong = await ws.request({"action": "ping"})
        err = await ws.request({"action": "subscribe", "stream": "nope", "symbol": "BTCUSDT", "exchange": "all"})
        assert "topic" not in pong and "topic" not in err and err["type"] == "error"
        bal = await ws.request({"action": "balance"})
        assert "topic" not in bal and bal["available"]["USDT"] == 500
        gone = await ws.request({"action": "unsubscribe", "subscription": ack["subscription"]})
        assert gone["type"] == "ack" and "topic" not in gone and gone["subscription"] == "orders"
