"""``POST /orders`` in front of FastAPI (``gateway.rest.fast``) answers exactly what the FastAPI route answers: the
same statuses, headers and bodies for placements and for every kind of refusal, over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.rest import fast
from tests.servers import make_settings, run_gateway
from tests.trading_helpers import auth

pytestmark = pytest.mark.asyncio

ORDER = {"token_id": "t1", "symbol": "BTCUSDT", "side": "buy", "price": "10000.00", "quantity": "0.001"}
# (description, body, headers beyond the user's token: None = no token at all)
CASES: list[tuple[str, Any, dict[str, str] | None]] = [
    ("placed", ORDER, {}),
    ("duplicate", ORDER, {}),
    ("insufficient", {**ORDER, "token_id": "t2", "quantity": "1000"}, {}),
    ("unknown symbol", {**ORDER, "token_id": "t3", "symbol": "NOPE"}, {}),
    ("tick size", {**ORDER, "token_id": "t4", "price": "10000.001"}, {}),
    ("unknown field", {**ORDER, "token_id": "t5", "colour": "red"}, {}),
    ("number as number", {**ORDER, "token_id": "t6", "price": 10000.5}, {}),
    ("not an object", [ORDER], {}),
    ("no token", {**ORDER, "token_id": "t7"}, None),
    ("forged token", {**ORDER, "token_id": "t8"}, {"Authorization": "Bearer x.y.z"}),
    ("not json", "token_id=t9", {"Content-Type": "text/plain"}),
    ("market", {**ORDER, "token_id": "t10", "type": "market", "price": None}, {}),
    ("charset", {**ORDER, "token_id": "t11"}, {"Content-Type": "application/json; charset=utf-8"}),
    ("vendor json", {**ORDER, "token_id": "t12"}, {"Content-Type": "application/vnd.order+json"}),
    ("invalid json", '{"token_id": "t13", ', {"Content-Type": "application/json"}),
    ("duplicate key", '{"token_id": "t14", "token_id": "t15", "symbol": "BTCUSDT", "side": "buy", '
                      '"price": "10000", "quantity": "0.001"}', {"Content-Type": "application/json"}),
    ("not utf-8", b'{"token_id": "t16\xff"}', {"Content-Type": "application/json"}),
    ("too large", {**ORDER, "token_id": "t17", "pad": "x" * 70_000}, {}),
    ("empty", "", {"Content-Type": "application/json"}),
]
VARYING = {"created_us", "updated_us", "date"}


def _comparable(r: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in r.headers.items() if k not in VARYING}
    body: Any = r.content
    if r.headers.get("content-type") == "application/json":
        body = orjson.loads(r.content)
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in VARYING}
    return r.status_code, headers, body


async def _answers(redis_url: str, user: str, fast_on: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    settings = make_settings(redis_url, SR_GATEWAY__ORDER_FINAL_WAIT_S="0.05")
    with monkeypatch.context() as m:
        if not fast_on:
            m.setattr(fast, "_trader_dependency", lambda _route: None)
        app = create_app(settings)
        out = []
        async with run_gateway(redis_url, settings, app=app) as base, httpx.AsyncClient(base_url=base) as c:
            token = auth(settings, user)
            dep = await c.post("/deposit", json={"asset": "USDT", "amount": "1000"}, headers=token)
            assert dep.status_code == 200
            for _, body, extra in CASES:
                headers = {} if extra is None else {**token, **extra}
                if isinstance(body, str | bytes):
                    r = await c.post("/orders", content=body, headers=headers)
                else:
                    r = await c.post("/orders", content=orjson.dumps(body),
                                     headers={"Content-Type": "application/json", **headers})
                out.append(_comparable(r))
        return out


async def test_the_fast_path_is_on() -> None:
    """If this fails, the route's authentication dependency no longer resolves from the request alone and every
    order goes through FastAPI's dependency machinery (correct, but slower): adapt ``fast._trader_dependency``.
    It is the route's own, so it checks the scope the route needs (a ``read`` API key may not place)."""
    from gateway.rest.routes import orders
    route = next(r for r in orders.router.routes if getattr(r, "path", "") == "/orders"
                 and "POST" in getattr(r, "methods", ()))
    dep = fast._trader_dependency(route)
    assert dep is not None and dep.scope == "trade"


async def test_the_same_answers_as_the_fastapi_route(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    through_fast = await _answers(redis_url, "fast-user", True, monkeypatch)
    through_fastapi = await _answers(redis_url, "route-user", False, monkeypatch)
    for (what, _, _), a, b in zip(CASES, through_fast, through_fastapi, strict=True):
        assert a == b, what
    assert through_fast[0][0] == 201 and through_fast[1][0] == 409 and through_fast[8][0] == 401


async def test_redis_unreachable_is_503_on_every_authenticated_route() -> None:
    """Authentication reads the user's revocation state from Redis when it is not cached: with Redis down that is
    a 503 on the fast path as on FastAPI's routes (a gateway restarted during a Redis outage answered 500)."""
    from shared.embedded_redis import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(dead)
    async with run_gateway(dead, settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        token = auth(settings, "nobody-cached")
        for method, path, body in (("POST", "/orders", ORDER), ("GET", "/orders", None), ("GET", "/balance", None),
                                   ("POST", "/deposit", {"asset": "USDT", "amount": "1"}), ("GET", "/me", None)):
            r = await c.request(method, path, json=body, headers=token)
            assert r.status_code == 503, (method, path, r.status_code, r.text)
