"""Order management over the client WebSocket and final states of market/IOC orders.

Real redis-server, the real app under uvicorn, real WebSocket clients, the matcher in-process
(``matcher.engine.run_matcher``) and market data published as an ingestor does (``tests.mdfeed``).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from shared import ledger, ledger_store, names
from shared.ledger import Order
from shared.settings import Settings
from tests.mdfeed import MdFeed, md_publish
from tests.servers import make_settings, run_gateway
from tests.trading_helpers import auth, matcher, publish_book, wait_status
from tests.wsclient import Client, RawClient, token, ws_client

pytestmark = pytest.mark.asyncio

Env = tuple[str, httpx.AsyncClient, Settings, aioredis.Redis]


@pytest.fixture
async def env(redis_url: str, aredis: aioredis.Redis) -> AsyncIterator[Env]:
    settings = make_settings(redis_url)
    async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base) as c:
        yield base, c, settings, aredis


async def fund(c: httpx.AsyncClient, settings: Settings, user: str, **amounts: str) -> None:
    for asset, amt in amounts.items():
        r = await c.post("/deposit", json={"asset": asset, "amount": amt}, headers=auth(settings, user))
        assert r.status_code == 200, r.text


_consumed: dict[int, int] = {}


async def next_event(ws: Client, within: float = 5.0) -> dict[str, Any]:
    """The next order event, including one that arrived before the reply awaited meanwhile."""
    start = _consumed.get(id(ws), 0)
    while True:
        for i in range(start, len(ws.raw)):
            m = orjson.loads(ws.raw[i])
            if m["type"] == "order":
                _consumed[id(ws)] = i + 1
                assert m["topic"] == "orders"
                return m["data"]  # type: ignore[no-any-return]
        start = len(ws.raw)
        await ws.recv(within)


def limit(token_id: str, **kw: Any) -> dict[str, Any]:
    return {"token_id": token_id, "symbol": "BTCUSDT", "side": "buy", "price": 50000, "quantity": 0.01, **kw}


async def check_ledger(r: aioredis.Redis, user: str) -> None:
    ledger.check_invariants(await ledger_store.get_account(r, user), await ledger_store.open_orders(r, user))


async def test_orders_stream_gets_every_event(env: Env, redis_url: str) -> None:
    base, c, settings, r = env
    feed = MdFeed(r)
    h = auth(settings, "u1")
    await fund(c, settings, "u1", USDT="2000")
    async with matcher(settings, redis_url), feed.heartbeats("binance", "okx"), \
            ws_client(base, tok=token("u1")) as ws, ws_client(base, tok=token("u2")) as other:
        ack = await ws.request({"action": "subscribe", "stream": "orders", "id": "s"})
        assert ack == {"type": "ack", "id": "s", "action": "subscribe", "subscription": "orders", "stream": "orders"}
        await other.subscribe(stream="orders")
        assert (await ws.request({"action": "subscribe", "stream": "orders"}))["code"] == "already_subscribed"
        await feed.bbo("okx", "BTCUSDT", "49000", "1", "49500", "1")

        assert (await c.post("/orders", json=limit("a", price=48000), headers=h)).status_code == 201
        ev = await next_event(ws)
        assert ev["event"] == "accepted" and ev["order"]["token_id"] == "a" and ev["order"]["status"] == "open"
        assert '"price":48000,' in ws.raw[-1] and '"reserved":480,' in ws.raw[-1]  # exact JSON numbers
        assert (await c.put("/orders/a", json={"price": "48000.5"}, headers=h)).status_code == 200
        ev = await next_event(ws)
        assert ev["event"] == "modified" and ev["order"]["price"] == 48000.5 and '"price":48000.5,' in ws.raw[-1]
        assert (await c.delete("/orders/a", headers=h)).status_code == 200
        ev = await next_event(ws)
        assert ev["event"] == "cancelled" and ev["order"]["reserved"] == 0

        # a resting buy, then a crossing BBO: the fill event reaches the client WebSocket
        await c.post("/orders", json=limit("b", price=49000), headers=h)
        assert (await next_event(ws))["event"] == "accepted"
        crossing = await feed.bbo("binance", "BTCUSDT", "48000", "1", "48990.5", "1")
        ev = await next_event(ws)
        assert ev["event"] == "filled" and ev["order"]["status"] == "filled"
        assert ev["order"]["average_price"] == 49000 and ev["fills"][0]["exchange"] == "binance"
        assert ev["fills"][0]["price"] == 49000 and ev["fills"][0]["quantity"] == 0.01
        assert ev["fills"][0]["ts_us"] >= crossing.ts_recv_us

        # IOC beyond the shown size: the remainder expires
        r2 = await c.post("/orders", json=limit("c", type="ioc", price=49600, quantity="1.5"), headers=h)
        assert r2.status_code == 400  # 1.5 BTC at 49600 is more than the funds
        await c.post("/orders", json=limit("c", type="ioc", price=49600, quantity="0.02"), headers=h)
        assert (await next_event(ws))["event"] == "accepted"
        await publish_book(r, "okx", "BTCUSDT", [("49000", "1")], [("49500", "0.01")])
        await publish_book(r, "binance", "BTCUSDT", [("48000", "1")], [("48990.5", "0")])
        ev = await next_event(ws)
        assert ev["event"] in ("filled", "expired")
        # the other user saw none of it
        with pytest.raises(asyncio.TimeoutError):
            await other.until(lambda m: m["type"] == "order", 0.3)
        # unsubscribe: no more events
        assert (await ws.request({"action": "unsubscribe", "subscription": "orders"}))["subscription"] == "orders"
        await c.post("/orders", json=limit("d", price=40000), headers=h)
        with pytest.raises(asyncio.TimeoutError):
            await ws.until(lambda m: m["type"] == "order", 0.3)
    await check_ledger(r, "u1")


async def test_ws_place_cancel_modify_get_balance(env: Env) -> None:
    base, c, settings, r = env
    await fund(c, settings, "u1", USDT="1000")
    async with ws_client(base, tok=token("u1")) as ws:
        await ws.subscribe(stream="orders")
        # exact digits: a JSON number with more digits than a float keeps them all
        await ws.send('{"action": "place_order", "id": 1, "token_id": "w1", "symbol": "BTCUSDT", "side": "buy", '
                      '"price": 50000.01, "quantity": 0.01000}')
        ack = await ws.until(lambda m: m["type"] in ("ack", "error"))
        assert ack["type"] == "ack" and ack["id"] == 1 and ack["action"] == "place_order", ack
        assert ack["order"]["status"] == "open" and '"reserved":500.0001,' in ws.raw[-1]
        assert (await next_event(ws))["event"] == "accepted"

        got = await ws.request({"action": "get_order", "id": 2, "token_id": "w1"})
        assert got["order"]["price"] == 50000.01 and got["id"] == 2
        bal = await ws.request({"action": "balance", "id": 3})
        assert '"USDT":499.9999' in ws.raw[-1] and bal["reserved"]["USDT"] == 500.0001

        mod = await ws.request({"action": "modify_order", "id": 4, "token_id": "w1", "price": "40000"})
        assert mod["type"] == "ack" and mod["order"]["reserved"] == 400 and mod["order"]["version"] == 2
        assert (await next_event(ws))["event"] == "modified"
        cxl = await ws.request({"action": "cancel_order", "id": "c", "token_id": "w1"})
        assert cxl["type"] == "ack" and cxl["id"] == "c" and cxl["order"]["status"] == "cancelled"
        assert (await next_event(ws))["event"] == "cancelled"
    h = auth(settings, "u1")
    assert (await c.get("/orders/w1", headers=h)).json()["status"] == "cancelled"
    assert (await c.get("/balance", headers=h)).json()["reserved"]["USDT"] == 0
    await check_ledger(r, "u1")


PLACE_REJECTIONS: list[tuple[dict[str, Any], str]] = [
    ({"symbol": "FOOUSDT"}, "unknown_symbol"),
    ({"side": "hold"}, "invalid_side"),
    ({"type": "stop"}, "invalid_type"),
    ({"type": "market"}, "invalid_field"),
    ({"price": None}, "missing_field"),
    ({"quantity": None}, "missing_field"),
    ({"price": 0}, "invalid_number"),
    ({"price": -1}, "invalid_number"),
    ({"price": "NaN"}, "invalid_number"),
    ({"price": True}, "invalid_number"),
    ({"quantity": "abc"}, "invalid_number"),
    ({"price": 50000.001}, "invalid_price"),
    ({"quantity": 0.000001}, "invalid_quantity"),
    ({"price": 100}, "below_min_notional"),
    ({"quantity": 1}, "insufficient_balance"),
    ({"token_id": ""}, "invalid_field"),
    ({"token_id": "a" * 65}, "invalid_field"),
    ({"token_id": "bad token"}, "invalid_field"),
    ({"token_id": 12}, "invalid_field"),
    ({"note": "hi"}, "unknown_field"),
    ({"token_id": "dup"}, "duplicate_token_id"),
]


async def test_ws_rejections_echo_the_id_and_leave_no_trace(env: Env) -> None:
    base, c, settings, r = env
    await fund(c, settings, "u1", USDT="1000")
    async with ws_client(base, tok=token("u1")) as ws:
        assert (await ws.request({"action": "place_order", **limit("dup")}))["type"] == "ack"
        for i, (changes, code) in enumerate(PLACE_REJECTIONS):
            body = {k: v for k, v in {**limit("x"), **changes}.items() if v is not None}
            reply = await ws.request({"action": "place_order", "id": i, **body})
            assert reply["type"] == "error" and reply["id"] == i and reply["code"] == code, (changes, reply)
            assert reply["message"]
        await ws.send('{"action": "place_order", "id": "nan", "token_id": "n", "symbol": "BTCUSDT", '
                      '"side": "buy", "price": NaN, "quantity": 1}')
        reply = await ws.until(lambda m: m["type"] == "error")
        assert reply["code"] == "bad_json"
        await ws.send('{"action": "place_order", "id": "big", "token_id": "n", "symbol": "BTCUSDT", '
                      '"side": "buy", "price": 1e400, "quantity": 1}')
        assert (await ws.until(lambda m: m["type"] == "error"))["code"] == "invalid_number"

        for msg, code in [
            ({"action": "cancel_order", "token_id": "nope"}, "order_not_found"),
            ({"action": "cancel_order"}, "missing_field"),
            ({"action": "cancel_order", "token_id": 5}, "invalid_field"),
            ({"action": "cancel_order", "token_id": "dup", "extra": 1}, "unknown_field"),
            ({"action": "get_order", "token_id": "nope"}, "order_not_found"),
            ({"action": "modify_order", "token_id": "nope", "price": 1}, "order_not_found"),
            ({"action": "modify_order", "token_id": "dup"}, "missing_field"),
            ({"action": "modify_order", "token_id": "dup", "price": 1.001}, "invalid_price"),
            ({"action": "modify_order", "token_id": "dup", "price": "NaN"}, "invalid_number"),
            ({"action": "modify_order", "token_id": "dup", "side": "sell"}, "unknown_field"),
            ({"action": "modify_order", "token_id": "dup", "quantity": 0.00001}, "below_min_notional"),
            ({"action": "modify_order", "token_id": "dup", "quantity": 1}, "insufficient_balance"),
            ({"action": "balance", "asset": "USDT"}, "unknown_field"),
        ]:
            reply = await ws.request({**msg, "id": "q"})
            assert reply["type"] == "error" and reply["code"] == code and reply["id"] == "q", (msg, reply)
        assert (await ws.request({"action": "cancel_order", "token_id": "dup"}))["type"] == "ack"
        reply = await ws.request({"action": "cancel_order", "token_id": "dup", "id": 9})
        assert reply["code"] == "order_not_open" and "cancelled" in reply["message"] and reply["id"] == 9
        reply = await ws.request({"action": "modify_order", "token_id": "dup", "price": 40000})
        assert reply["code"] == "order_not_open"
    h = auth(settings, "u1")
    assert (await c.get("/orders", headers=h)).json()["total"] == 1
    assert (await c.get("/balance", headers=h)).json()["total"]["USDT"] == 1000
    await check_ledger(r, "u1")


async def test_order_actions_need_authentication(env: Env) -> None:
    base, *_ = env
    async with ws_client(base) as ws:
        for name in ("place_order", "cancel_order", "modify_order", "get_order", "balance"):
            assert (await ws.request({"action": name}))["code"] == "not_authenticated"
        assert (await ws.request({"action": "subscribe", "stream": "orders"}))["code"] == "not_authenticated"


async def test_market_and_ioc_answer_their_final_state(env: Env, redis_url: str) -> None:
    base, c, settings, r = env
    feed = MdFeed(r)
    h = auth(settings, "u1")
    await fund(c, settings, "u1", USDT="100000", BTC="1")
    async with matcher(settings, redis_url, live=()):
        # no live price: a market order ends rejected, in the POST's answer
        m = await c.post("/orders", json={"token_id": "dead", "symbol": "BTCUSDT", "side": "buy", "type": "market",
                                          "quantity": 0.01}, headers=h)
        assert m.status_code == 201 and m.json()["status"] == "rejected" and m.json()["fills"] == []
        async with feed.heartbeats("binance", "okx"):
            await publish_book(r, "okx", "BTCUSDT", [("49995", "0.1")], [("50000", "0.05"), ("50020", "0.1")])
            await publish_book(r, "binance", "BTCUSDT", [("49990", "0.2")], [("50010", "0.1")])
            await feed.bbo("okx", "BTCUSDT", "49995", "0.1", "50000", "0.05")
            await feed.bbo("binance", "BTCUSDT", "49990", "0.2", "50010", "0.1")
            await asyncio.sleep(0.1)
            m = await c.post("/orders", json={"token_id": "m", "symbol": "BTCUSDT", "side": "buy", "type": "market",
                                              "quantity": 0.1}, headers=h)
            assert m.status_code == 201, m.text
            o = m.json()
            assert o["status"] == "filled" and o["filled_quantity"] == 0.1 and o["reserved"] == 0
            assert [(f["price"], f["quantity"], f["exchange"]) for f in o["fills"]] == [
                (50000, 0.05, "okx"), (50010, 0.05, "binance")]
            assert {k: v for k, v in o.items() if k != "fills"} == (await c.get("/orders/m", headers=h)).json()
            # IOC over the WebSocket: 0.1 @ 49995 okx, 0.2 @ 49990 binance, the rest expires
            async with ws_client(base, tok=token("u1")) as ws:
                ack = await ws.request({"action": "place_order", "id": 7, "token_id": "i", "symbol": "BTCUSDT",
                                        "side": "sell", "type": "ioc", "price": 49985, "quantity": 0.5})
                assert ack["type"] == "ack" and ack["id"] == 7, ack
                assert ack["order"]["status"] == "expired" and ack["order"]["filled_quantity"] == 0.3
                assert [f["price"] for f in ack["order"]["fills"]] == [49995, 49990]
    await check_ledger(r, "u1")


async def test_final_state_falls_back_when_the_matcher_is_slow(redis_url: str) -> None:
    settings = make_settings(redis_url, SR_GATEWAY__ORDER_FINAL_WAIT_S="0.3")
    async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base) as c:
        h = auth(settings, "u1")
        await fund(c, settings, "u1", USDT="1000")
        # no matcher at all: answered after the wait, in its current (open) state
        m = await c.post("/orders", json={"token_id": "m", "symbol": "BTCUSDT", "side": "buy", "type": "market",
                                          "quantity": 0.01}, headers=h)
        assert m.status_code == 201 and m.json()["status"] == "open" and m.json()["fills"] == []
        async with matcher(settings, redis_url, live=()):
            await wait_status(c, "m", "rejected", h)


async def test_slow_client_is_closed_never_loses_an_order_event(redis_url: str, aredis: aioredis.Redis) -> None:
    n = 3000  # x 4 KB: more than the kernel's socket buffers plus the queue hold
    async with run_gateway(redis_url, SR_WS__QUEUE_HARD_MAX="500") as base, ws_client(base, tok=token("u1")) as fast:
        slow = await RawClient.open(base, token("u1"))
        try:
            await slow.send({"action": "subscribe", "stream": "orders"})
            assert (await slow.json())["type"] == "ack"
            await fast.subscribe(stream="orders")
            got: list[int] = []

            async def read_fast() -> None:
                while len(got) < n:
                    m = await fast.recv(10)
                    if m["type"] == "order":
                        got.append(int(m["data"]["order"]["token_id"]))

            reader = asyncio.create_task(read_fast())
            pad = "p" * 4000
            channel = names.user_events_channel("u1")
            for i in range(n):
                order = Order("u1", str(i), "BTCUSDT", "buy", "limit", Decimal(1), Decimal(1), "USDT", Decimal(1),
                              reason=pad)
                await md_publish(aredis, channel, orjson.dumps(ledger.event("accepted", order)))
            await asyncio.wait_for(reader, 30)
            assert got == list(range(n))  # the fast client got every event, in order
            seen: list[int] = []
            while True:
                op, data = await slow.frame()
                if op == 8:
                    break
                seen.append(int(orjson.loads(data)["data"]["order"]["token_id"]))
            assert seen == list(range(len(seen))) and len(seen) < n  # a prefix, no gap: closed, not dropped
            code = struct.unpack("!H", data[:2])[0]
            assert code == 4009 and b"too slow" in data[2:]
        finally:
            slow.sock.close()


async def test_an_order_placed_on_one_gateway_is_pushed_by_another(redis_url: str, aredis: aioredis.Redis) -> None:
    """Two gateways on one Redis (what ``--scale gateway=N`` runs): REST on one, the user's socket on the other,
    the matcher's fill included; the token one issued works on the other."""
    settings = make_settings(redis_url)
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, settings) as rest_base, run_gateway(redis_url, settings) as ws_base, \
            httpx.AsyncClient(base_url=rest_base) as c:
        assert rest_base != ws_base
        await fund(c, settings, "u9", USDT="2000")
        async with matcher(settings, redis_url), feed.heartbeats("binance", "okx"), \
                ws_client(ws_base, tok=token("u9")) as ws:
            await ws.subscribe(stream="orders")
            r = await c.post("/orders", json=limit("x1"), headers=auth(settings, "u9"))
            assert r.status_code == 201, r.text
            accepted = await ws.until(lambda m: m["type"] == "order")
            assert (accepted["data"]["event"], accepted["data"]["order"]["token_id"]) == ("accepted", "x1")
            await feed.bbo("okx", "BTCUSDT", "49000", "1", "49990", "1")  # crosses the limit: the matcher fills
            filled = await ws.until(lambda m: m["type"] == "order" and m["data"]["event"] == "filled", 10)
            assert filled["data"]["order"]["status"] == "filled" and filled["data"]["fills"]
