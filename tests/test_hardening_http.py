"""Hostile input over real HTTP: every error in the one shape, never a 500, a body limit on every route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Query

from gateway.app import create_app
from gateway.rest.body import api_router
from gateway.services.decimals import Dec, PositiveDec
from gateway.services.requests import StrictModel
from tests.servers import make_settings, run_gateway

LIMIT = 64 * 1024
JSON = {"content-type": "application/json"}


class EchoIn(StrictModel):
    amount: PositiveDec
    price: Dec | None = None
    n: int = 0


def _app(redis_url: str) -> FastAPI:
    app = create_app(make_settings(redis_url))
    exact = api_router()

    @exact.post("/echo")
    async def echo(body: EchoIn) -> dict[str, Any]:
        return {"amount": str(body.amount), "is_decimal": isinstance(body.amount, Decimal), "n": body.n}

    @exact.get("/q")
    async def q(limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, int]:
        return {"limit": limit}

    @exact.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @exact.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(418, detail={"not": "a string"})

    plain = APIRouter()  # a route that forgot api_router(): the middleware still guards it

    @plain.post("/plain")
    async def plain_echo(body: EchoIn) -> dict[str, str]:
        return {"amount": str(body.amount)}

    app.include_router(exact)
    app.include_router(plain)
    return app


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with run_gateway(redis_url, app=_app(redis_url)) as base, httpx.AsyncClient(base_url=base) as c:
        yield c


def assert_shape(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"] and isinstance(body["code"], str)
    if code:
        assert body["code"] == code, body
    return body


async def test_exact_decimals_through_http(client: httpx.AsyncClient) -> None:
    cases = {b"0.300000000000000001": "0.300000000000000001", b"12345678901234.56789": "12345678901234.56789", b"1.10": "1.10", b"5": "5",
             b'"0.000000000000000001"': "1E-18", b'" 7.5 "': "7.5", b"1e3": "1E+3"}
    for raw, expected in cases.items():
        r = await client.post("/echo", content=b'{"amount": ' + raw + b"}", headers=JSON)
        assert r.status_code == 200, (raw, r.text)
        assert r.json() == {"amount": expected, "is_decimal": True, "n": 0}
    r = await client.post("/plain", content=b'{"amount": 0.1}', headers=JSON)
    assert r.status_code == 200 and r.json() == {"amount": "0.1"}


MALFORMED = [
    b'{"amount": NaN}', b'{"amount": Infinity}', b'{"amount": -Infinity}', b'{"amount": 1, "n": NaN}',
    b'{"amount": ' + b"9" * 5000 + b"}", b"not json", b'{"amount": 1', b"{'amount': 1}", b"\xff\xfe\x00",
    b'{"amount": "\\ud800"}', b'{"amount": 1, "x": ' + b"[" * 40 + b"]" * 40 + b"}",
    b"[" * 20000 + b"]" * 20000,
]


@pytest.mark.parametrize("path", ["/echo", "/plain", "/register", "/login"])
async def test_malformed_json_is_400(client: httpx.AsyncClient, path: str) -> None:
    for raw in MALFORMED:
        r = await client.post(path, content=raw, headers=JSON)
        assert r.status_code == 400, (raw[:60], r.text)
        assert_shape(r, 400, "invalid_json")


INVALID: list[Any] = [
    {"amount": "NaN"}, {"amount": "Infinity"}, {"amount": "-inf"}, {"amount": 1e300}, {"amount": "1e400"},
    {"amount": 10**20}, {"amount": "abc"}, {"amount": True}, {"amount": None}, {"amount": []}, {"amount": {}},
    {"amount": "1_000"}, {"amount": 0}, {"amount": -1}, {"amount": "0x1f"}, {"amount": 1, "n": "many"},
    {"amount": 1, "n": 1.5}, {"amount": 1, "unknown": 1}, {"amount": 1, "n": [[[[[[[[[[1]]]]]]]]]]},
    {}, [], "amount", 12, None, {"amount": 1, "price": "1" * 80},
]


@pytest.mark.parametrize("path", ["/echo", "/plain"])
async def test_invalid_values_are_422(client: httpx.AsyncClient, path: str) -> None:
    for body in INVALID:
        r = await client.post(path, json=body)
        assert r.status_code == 422, (body, r.text)
        out = assert_shape(r, 422, "validation_error")
        assert isinstance(out["errors"], list) and out["errors"]
        for e in out["errors"]:
            assert set(e) == {"loc", "msg", "type"} and e["loc"][0] == "body"


async def test_1e400_as_a_json_number(client: httpx.AsyncClient) -> None:
    # FastAPI's stock handler would try to echo the offending value back; ours never does
    for raw in (b'{"amount": 1e400}', b'{"amount": -1e400}', b'{"amount": 1e-400}', b'{"amount": 1E+999999999}'):
        body = assert_shape(await client.post("/echo", content=raw, headers=JSON), 422, "validation_error")
        assert body["detail"].startswith("amount: ")


async def test_readable_validation_detail(client: httpx.AsyncClient) -> None:
    r = await client.post("/echo", json={"amount": "abc", "bogus": 1})
    body = assert_shape(r, 422, "validation_error")
    assert body["detail"] == 'amount: must be a decimal number such as 12.5 or "12.5"; bogus: unknown field'
    r = await client.get("/q", params={"limit": "abc"})
    assert assert_shape(r, 422)["detail"].startswith("query.limit: ")
    for bad in ("NaN", "0", "101", "1e3", "9" * 5000):
        assert_shape(await client.get("/q", params={"limit": bad}), 422, "validation_error")
    assert (await client.get("/q", params={"limit": "5"})).json() == {"limit": 5}


@pytest.mark.parametrize("headers,content", [
    ({"content-type": "text/plain"}, b'{"amount": 1}'),
    ({"content-type": "application/x-www-form-urlencoded"}, b"amount=1"),
    ({"content-type": "application/xml"}, b"<amount>1</amount>"),
    ({}, b'{"amount": 1}'),
])
async def test_wrong_content_type_is_415(client: httpx.AsyncClient, headers: dict[str, str], content: bytes) -> None:
    for path in ("/echo", "/register"):
        assert_shape(await client.post(path, content=content, headers=headers), 415, "unsupported_media_type")
    r = await client.post("/echo", content=b'{"amount": 1}', headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


async def test_body_limit_with_content_length(client: httpx.AsyncClient) -> None:
    big = b'{"amount": 1, "pad": "' + b"x" * LIMIT + b'"}'
    for path in ("/echo", "/register", "/login", "/info", "/nowhere"):
        body = assert_shape(await client.post(path, content=big, headers=JSON), 413, "payload_too_large")
        assert str(LIMIT) in body["detail"]
    # exactly at the limit passes the limit
    doc = b'{"amount": 1}'
    at_limit = doc + b" " * (LIMIT - len(doc))
    assert (await client.post("/echo", content=at_limit, headers=JSON)).status_code == 200
    assert_shape(await client.post("/echo", content=at_limit + b" ", headers=JSON), 413, "payload_too_large")


async def test_body_limit_without_content_length(client: httpx.AsyncClient) -> None:
    async def chunks(total: int) -> AsyncIterator[bytes]:
        yield b'{"amount": 1, "pad": "'
        sent = 0
        while sent < total:
            yield b"x" * 4096
            sent += 4096
        yield b'"}'

    r = await client.post("/echo", content=chunks(LIMIT * 2), headers=JSON)
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert_shape(r, 413, "payload_too_large")
    # a small chunked body is fine
    async def small() -> AsyncIterator[bytes]:
        yield b'{"amount":'
        yield b" 2.5}"

    r = await client.post("/echo", content=small(), headers=JSON)
    assert r.status_code == 200 and r.json()["amount"] == "2.5"


async def test_body_limit_raw_socket_slow_chunks(client: httpx.AsyncClient) -> None:
    """A client trickling chunks with no Content-Length is cut off as soon as it passes the limit."""
    host, port = str(client.base_url.host), client.base_url.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            chunk = b"x" * 8192
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 413")
    finally:
        writer.close()


async def test_404_405_500_and_http_exceptions(client: httpx.AsyncClient) -> None:
    assert_shape(await client.get("/no/such/route"), 404, "not_found")
    r = await client.delete("/info")
    assert_shape(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"]
    r = await client.get("/boom")
    body = assert_shape(r, 500, "internal")
    assert body == {"detail": "internal error", "code": "internal"} and "secret" not in r.text
    assert_shape(await client.get("/teapot"), 418)
    # the server is still fine afterwards
    assert (await client.get("/health")).status_code == 200


async def test_public_routes_survive_odd_requests(client: httpx.AsyncClient) -> None:
    r = await client.get("/info")
    assert r.status_code == 200
    r = await client.request("GET", "/info", content=b'{"x": NaN}', headers=JSON)
    assert_shape(r, 400, "invalid_json")
    r = await client.get("/info", params={"anything": "x" * 1000})
    assert r.status_code == 200
