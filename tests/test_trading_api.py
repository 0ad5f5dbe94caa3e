"""Trading REST routes over real HTTP and a real Redis: deposit, balance, orders, cancel, modify, every rejection."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.servers import make_settings, run_gateway
from tests.trading_helpers import auth

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], dict[str, str]]]:
    settings = make_settings(redis_url)
    async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base) as c:
        yield c, auth(settings, "alice"), auth(settings, "bob")


def raw(c: httpx.AsyncClient, method: str, url: str, body: bytes, h: dict[str, str]) -> httpx.Request:
    return c.build_request(method, url, content=body, headers={**h, "Content-Type": "application/json"})


def order(token: str = "o1", **kw: object) -> dict[str, object]:
    body: dict[str, object] = {"token_id": token, "symbol": "BTCUSDT", "side": "buy", "price": 50000,
                               "quantity": 0.01}
    body.update(kw)
    return body


async def test_deposit_and_balance(api) -> None:  # type: ignore[no-untyped-def]
    c, a, _ = api
    r = await c.post("/deposit", json={"asset": "USDT", "amount": 1000.1}, headers=a)
    assert r.status_code == 200, r.text
    r = await c.post("/deposit", json={"asset": "USDT", "amount": "0.2"}, headers=a)
    assert r.json()["total"]["USDT"] == 1000.3  # exact, no float drift
    bal = (await c.get("/balance", headers=a)).json()
    assert bal["available"]["USDT"] == 1000.3 and bal["reserved"]["USDT"] == 0
    assert set(bal["total"]) == {"BTC", "USDT", "ETH", "SOL", "XRP", "DOGE"}


@pytest.mark.parametrize("body,code", [
    (b'{"asset": "USDT", "amount": NaN}', "invalid_json"),
    (b'{"asset": "USDT", "amount": Infinity}', "invalid_json"),
    (b'{"asset": "USDT", "amount": -Infinity}', "invalid_json"),
    (b'{"asset": "USDT", "amount": 1e400}', "invalid_number"),
    (b'{"asset": "USDT", "amount": "abc"}', "invalid_number"),
    (b'{"asset": "USDT", "amount": "NaN"}', "invalid_number"),
    (b'{"asset": "USDT", "amount": true}', "invalid_number"),
    (b'{"asset": "USDT", "amount": [1]}', "invalid_number"),
    (b'{"asset": "USDT", "amount": 0}', "invalid_number"),
    (b'{"asset": "USDT", "amount": -5}', "invalid_number"),
    (b'{"asset": "USDT", "amount": 0.00000001}', "too_precise"),
    (b'{"asset": "USDT", "amount": 1e13}', "amount_too_large"),
    (b'{"asset": "USDT", "amount": 1' + b"0" * 5000 + b"}", "invalid_json"),
    (b'{"asset": "FOO", "amount": 1}', "unknown_asset"),
    (b'{"asset": 5, "amount": 1}', "invalid_field"),
    (b'{"amount": 1}', "missing_field"),
    (b'{"asset": "USDT", "amount": 1, "extra": 1}', "unknown_field"),
    (b'[1, 2]', "invalid_body"),
    (b'{"asset": "USDT", ', "invalid_json"),
    (b'\xff\xfe', "invalid_json"),
    (b"[" * 5000 + b"]" * 5000, "invalid_json"),
])
async def test_deposit_rejections(api, body: bytes, code: str) -> None:  # type: ignore[no-untyped-def]
    c, a, _ = api
    r = await c.send(raw(c, "POST", "/deposit", body, a))
    assert r.status_code == (400 if code == "invalid_json" else 422), r.text
    assert r.json()["code"] == code and r.json()["detail"]
    assert (await c.get("/balance", headers=a)).json()["total"]["USDT"] == 0


async def test_oversize_body_and_auth(api) -> None:  # type: ignore[no-untyped-def]
    c, a, _ = api
    # one body limit for every route (gateway.max_body_bytes, 64 KiB), one code: payload_too_large
    r = await c.send(raw(c, "POST", "/orders", b'{"token_id": "' + b"x" * 70000 + b'"}', a))
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    r = await c.send(raw(c, "POST", "/orders", b'{"token_id": "' + b"x" * 20000 + b'"}', a))
    assert r.status_code == 422 and r.json()["code"] == "missing_field"
    for method, url in [("POST", "/deposit"), ("GET", "/balance"), ("POST", "/orders"), ("GET", "/orders"),
                        ("GET", "/orders/x"), ("DELETE", "/orders/x"), ("PUT", "/orders/x"), ("GET", "/fills")]:
        r = await c.request(method, url, json={})
        assert r.status_code == 401, (method, url)
        r = await c.request(method, url, json={}, headers={"Authorization": "Bearer nonsense"})
        assert r.status_code == 401, (method, url)


async def test_place_get_list_and_ownership(api) -> None:  # type: ignore[no-untyped-def]
    c, a, b = api
    await c.post("/deposit", json={"asset": "USDT", "amount": 1000}, headers=a)
    r = await c.post("/orders", json=order(), headers=a)
    assert r.status_code == 201, r.text
    o = r.json()
    assert o["token_id"] == "o1" and o["status"] == "open" and o["type"] == "limit"
    assert o["price"] == 50000 and o["quantity"] == 0.01 and o["reserved"] == 500
    assert o["filled_quantity"] == 0 and o["average_price"] is None and "user_id" not in o
    bal = (await c.get("/balance", headers=a)).json()
    assert bal["reserved"]["USDT"] == 500 and bal["available"]["USDT"] == 500
    assert (await c.get("/orders/o1", headers=a)).json() == o
    # another user's order is indistinguishable from a missing one
    for m in ("GET", "DELETE"):
        r1 = await c.request(m, "/orders/o1", headers=b)
        r2 = await c.request(m, "/orders/nope", headers=b)
        assert r1.status_code == r2.status_code == 404 and r1.json()["code"] == r2.json()["code"]
    assert (await c.put("/orders/o1", json={"price": 1}, headers=b)).status_code == 404
    # the same token_id is free for another user
    await c.post("/deposit", json={"asset": "USDT", "amount": 1000}, headers=b)
    assert (await c.post("/orders", json=order(), headers=b)).status_code == 201
    # duplicate for the same user
    r = await c.post("/orders", json=order(price=40000), headers=a)
    assert r.status_code == 409 and r.json()["code"] == "duplicate_token_id"
    await c.post("/orders", json=order("o2", price=40000), headers=a)
    lst = (await c.get("/orders", headers=a)).json()
    assert [x["token_id"] for x in lst["orders"]] == ["o2", "o1"] and lst["total"] == 2
    page = (await c.get("/orders?limit=1&offset=1", headers=a)).json()
    assert [x["token_id"] for x in page["orders"]] == ["o1"]
    await c.delete("/orders/o2", headers=a)
    assert [x["token_id"] for x in (await c.get("/orders?status=open", headers=a)).json()["orders"]] == ["o1"]
    assert [x["token_id"] for x in (await c.get("/orders?status=cancelled", headers=a)).json()["orders"]] == ["o2"]
    assert (await c.get("/orders?status=bogus", headers=a)).status_code == 422
    assert (await c.get("/orders?limit=0", headers=a)).status_code == 422
    assert (await c.get("/fills", headers=a)).json() == {"fills": [], "total": 0, "limit": 100, "offset": 0}


@pytest.mark.parametrize("changes,status,code", [
    ({"symbol": "FOOUSDT"}, 422, "unknown_symbol"),
    ({"side": "hold"}, 422, "invalid_side"),
    ({"type": "stop"}, 422, "invalid_type"),
    ({"type": "market"}, 422, "invalid_field"),
    ({"price": None}, 422, "missing_field"),
    ({"price": 0}, 422, "invalid_number"),
    ({"price": -1}, 422, "invalid_number"),
    ({"quantity": "abc"}, 422, "invalid_number"),
    ({"quantity": None}, 422, "missing_field"),
    ({"price": 50000.001}, 422, "invalid_price"),
    ({"quantity": 0.000001}, 422, "invalid_quantity"),
    ({"price": 100, "quantity": 0.01}, 422, "below_min_notional"),
    ({"quantity": 1}, 400, "insufficient_balance"),
    ({"token_id": ""}, 422, "invalid_field"),
    ({"token_id": "a" * 65}, 422, "invalid_field"),
    ({"token_id": "bad token"}, 422, "invalid_field"),
    ({"token_id": 12}, 422, "invalid_field"),
    ({"note": "hi"}, 422, "unknown_field"),
])
async def test_order_rejections(api, changes: dict[str, object], status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    c, a, _ = api
    await c.post("/deposit", json={"asset": "USDT", "amount": 1000}, headers=a)
    body = order(**changes)
    body = {k: v for k, v in body.items() if v is not None}
    r = await c.post("/orders", json=body, headers=a)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["detail"]
    bal = (await c.get("/balance", headers=a)).json()
    assert bal["reserved"]["USDT"] == 0 and (await c.get("/orders", headers=a)).json()["total"] == 0


async def test_nan_price_and_sell_needs_base(api) -> None:  # type: ignore[no-untyped-def]
    c, a, _ = api
    r = await c.send(raw(c, "POST", "/orders", b'{"token_id":"x","symbol":"BTCUSDT","side":"buy","price":NaN,'
                                              b'"quantity":1}', a))
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    r = await c.post("/orders", json=order(side="sell"), headers=a)
    assert r.status_code == 400 and "BTC" in r.json()["detail"]
    # a rejected token_id is not consumed
    await c.post("/deposit", json={"asset": "BTC", "amount": "0.5"}, headers=a)
    r = await c.post("/orders", json=order(side="sell"), headers=a)
    assert r.status_code == 201 and r.json()["reserve_asset"] == "BTC" and r.json()["reserved"] == 0.01


async def test_cancel(api) -> None:  # type: ignore[no-untyped-def]
    c, a, _ = api
    await c.post("/deposit", json={"asset": "USDT", "amount": 1000}, headers=a)
    await c.post("/orders", json=order(), headers=a)
    r = await c.delete("/orders/o1", headers=a)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["reserved"] == 0
    assert (await c.get("/balance", headers=a)).json()["available"]["USDT"] == 1000
    r = await c.delete("/orders/o1", headers=a)
    assert r.status_code == 409 and r.json()["code"] == "order_not_open" and "cancelled" in r.json()["detail"]
    assert (await c.delete("/orders/" + "z" * 100, headers=a)).status_code == 404
    # the token stays used forever
    assert (await c.post("/orders", json=order(), headers=a)).status_code == 409


async def test_modify(api) -> None:  # type: ignore[no-untyped-def]
    c, a, _ = api
    await c.post("/deposit", json={"asset": "USDT", "amount": 1000}, headers=a)
    await c.post("/orders", json=order(), headers=a)
    r = await c.put("/orders/o1", json={"price": "40000", "quantity": 0.02}, headers=a)
    assert r.status_code == 200, r.text
    assert r.json()["price"] == 40000 and r.json()["quantity"] == 0.02 and r.json()["reserved"] == 800
    assert (await c.get("/balance", headers=a)).json()["reserved"]["USDT"] == 800
    r = await c.put("/orders/o1", json={"quantity": 0.03}, headers=a)  # 1200 > 1000
    assert r.status_code == 400 and r.json()["code"] == "insufficient_balance"
    assert (await c.get("/orders/o1", headers=a)).json()["quantity"] == 0.02
    for body, code in [({}, "missing_field"), ({"price": 1.001}, "invalid_price"), ({"side": "sell"}, "unknown_field"),
                       ({"price": "NaN"}, "invalid_number"), ({"quantity": 0.00001}, "below_min_notional")]:
        r = await c.put("/orders/o1", json=body, headers=a)
        assert r.status_code == 422 and r.json()["code"] == code, (body, r.text)
    await c.delete("/orders/o1", headers=a)
    r = await c.put("/orders/o1", json={"price": 30000}, headers=a)
    assert r.status_code == 409 and r.json()["code"] == "order_not_open"
    assert (await c.get("/balance", headers=a)).json()["reserved"]["USDT"] == 0
