"""Hand-written hostile inputs that fuzzers do not generate, each with its exact documented status and ``code``,
and after each no trace: the whole Redis database byte for byte as before (failed-login counters aside).

Raw ``NaN``/``Infinity``/``1e400``, 20-digit decimals, 5,000-digit integers, 10 MB and 100k-deep bodies, NUL
bytes and odd unicode in usernames and token_ids, 73-byte passwords at register and login, every JWT forgery,
another user's ``token_id`` on every order route, unknown fields.
"""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from shared import tokens
from shared.settings import Settings
from tests.servers import make_settings, redis_client, run_gateway
from tests.trading_helpers import auth

pytestmark = pytest.mark.asyncio
JSON = {"Content-Type": "application/json"}
ORDER = {"token_id": "h1", "symbol": "BTCUSDT", "side": "buy", "price": "100", "quantity": "0.1"}
# Every route taking a JSON body, with a valid body: the cases below spoil one field of it.
BODIES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/deposit", {"asset": "USDT", "amount": "5"}),
    ("POST", "/orders", ORDER),
    ("PUT", "/orders/alice-1", {"price": "101", "quantity": "0.1"}),
]
# (field, route) pairs holding a decimal
DECIMALS = [(0, "amount"), (1, "price"), (1, "quantity"), (2, "price"), (2, "quantity")]
AUTHED = [("GET", "/me"), ("GET", "/balance"), ("POST", "/deposit"), ("POST", "/orders"), ("GET", "/orders"),
          ("GET", "/orders/alice-1"), ("PUT", "/orders/alice-1"), ("DELETE", "/orders/alice-1"), ("GET", "/fills")]


@dataclass
class Api:
    c: httpx.AsyncClient
    r: aioredis.Redis
    settings: Settings
    alice: dict[str, str]
    bob: dict[str, str]
    base: str

    async def snapshot(self) -> dict[bytes, bytes | None]:
        """Every key's serialised value, failed-login counters aside (a refused login counts, by design)."""
        keys = sorted(k for k in await self.r.keys("*") if not k.startswith(b"auth:fail:"))
        return {k: await self.r.dump(k) for k in keys}


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[Api]:
    settings = make_settings(redis_url)
    r = redis_client(redis_url)
    try:
        async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
            a = Api(c, r, settings, auth(settings, "alice-id"), auth(settings, "bob-id"), base)
            reg = await c.post("/register", json={"username": "alice", "password": "correct horse battery"})
            assert reg.status_code == 201, reg.text
            for who in (a.alice, a.bob):
                assert (await c.post("/deposit", json={"asset": "USDT", "amount": "10000"}, headers=who)).status_code == 200
            for who, tid in ((a.alice, "alice-1"), (a.bob, "bob-1")):
                r1 = await c.post("/orders", json={**ORDER, "token_id": tid}, headers=who)
                assert r1.status_code == 201, r1.text
            yield a
    finally:
        await r.aclose()


def expect(r: httpx.Response, status: int, code: str, what: object = "") -> None:
    assert r.status_code == status, (what, r.status_code, r.text[:300])
    body = r.json()
    assert body["code"] == code and isinstance(body["detail"], str), (what, body)


async def send_all(api: Api, cases: Iterable[tuple[str, str, bytes, int, str]], who: dict[str, str]) -> None:
    """Each (method, path, raw body, status, code) answered exactly so, and the database untouched."""
    before = await api.snapshot()
    for method, path, body, status, code in cases:
        r = await api.c.request(method, path, content=body, headers={**who, **JSON})
        expect(r, status, code, (method, path, body[:80]))
    assert await api.snapshot() == before


def raw(template: dict[str, Any], field: str, literal: str) -> bytes:
    """``template`` as JSON with ``field`` set to a raw JSON literal (not a JSON string)."""
    return json.dumps({**template, field: "@@"}).replace('"@@"', literal).encode()


async def test_raw_nan_infinity_and_1e400(api: Api) -> None:
    cases = []
    for i, field in DECIMALS:
        method, path, body = BODIES[i]
        for lit in ("NaN", "Infinity", "-Infinity"):
            cases.append((method, path, raw(body, field, lit), 400, "invalid_json"))
        for lit in ("1e400", "-1e400", "1E+400", "1e-400"):
            cases.append((method, path, raw(body, field, lit), 422, "invalid_number"))
        for text in ("NaN", "nan", "Infinity", "inf", "1e400", "1e-400", "sNaN"):
            cases.append((method, path, raw(body, field, json.dumps(text)), 422, "invalid_number"))
    creds = {"username": "alice", "password": "correct horse battery"}
    for path in ("/register", "/login"):
        for field in creds:
            for lit in ("NaN", "Infinity", "-Infinity"):
                cases.append(("POST", path, raw(creds, field, lit), 400, "invalid_json"))
            cases.append(("POST", path, raw(creds, field, "1e400"), 422, "validation_error"))  # not a string
    await send_all(api, cases, api.alice)


async def test_20_digit_decimals_and_5000_digit_integers(api: Api) -> None:
    cases = []
    for i, field in DECIMALS:
        method, path, body = BODIES[i]
        for lit in ("12345678901234567890", "0.12345678901234567890", "1.0000000000000000001",
                    "99999999999999999999.5"):
            cases.append((method, path, raw(body, field, lit), 422, "invalid_number"))  # as a JSON number
            cases.append((method, path, raw(body, field, json.dumps(lit)), 422, "invalid_number"))  # and a string
        # Beyond Python's 4300-digit int limit the JSON itself is refused; below it, the bounds.
        cases.append((method, path, raw(body, field, "9" * 5000), 400, "invalid_json"))
        cases.append((method, path, raw(body, field, "9" * 4000), 422, "invalid_number"))
        cases.append((method, path, raw(body, field, json.dumps("9" * 5000)), 422, "invalid_number"))
    await send_all(api, cases, api.alice)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_10_mb_bodies_are_refused_cheaply(api: Api) -> None:
    """A 10 MB body, announced or chunked, is a 413 without the gateway reading (or keeping) it."""
    before = await api.snapshot()
    rss0 = peak_rss_mb()
    host, port = str(api.c.base_url.host), api.c.base_url.port
    size = 10 * 1024 * 1024
    for method, path, _ in BODIES + [("POST", "/register", {}), ("POST", "/login", {})]:
        # Announced: answered from the headers alone, at once, and the connection closed.
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Authorization: {api.alice['Authorization']}\r\nContent-Length: {size}\r\n\r\n".encode()
                         + b'{"a": "' + b"x" * 65536)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 413"), head
            assert b'"code":"payload_too_large"' in await asyncio.wait_for(reader.read(4096), 10)
        finally:
            writer.close()

        # Chunked, no length: cut off once past the limit (at most 1 MiB more is read and dropped).
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(size // 65536):
                yield b"x" * 65536

        try:
            r = await api.c.request(method, path, content=chunks(), headers={**api.alice, **JSON})
            expect(r, 413, "payload_too_large", path)
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the server answered and closed while the client was still sending: nothing was kept
    # The gateway runs in this process: reading ten bodies of 10 MB would show in its peak memory.
    assert peak_rss_mb() - rss0 < 40, (rss0, peak_rss_mb())
    assert await api.snapshot() == before


async def test_100k_deep_json(api: Api) -> None:
    """100k levels are over the 64 KiB limit (413); 30k levels within it are refused by the depth check (400),
    never a RecursionError."""
    cases = []
    for method, path, _ in BODIES + [("POST", "/register", {}), ("POST", "/login", {})]:
        for deep in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000):
            cases.append((method, path, deep, 413, "payload_too_large"))
        for deep in (b"[" * 60_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000, b"[" * 30_000 + b"]" * 30_000,
                     b'{"asset": ' + b"[" * 33 + b"]" * 33 + b', "amount": 1}'):
            cases.append((method, path, deep, 400, "invalid_json"))
    t0 = time.monotonic()
    await send_all(api, cases, api.alice)
    assert time.monotonic() - t0 < 60  # generous: a quadratic scan of a deep document would take minutes


USERNAMES = ["al\x00ice", "\x00\x00\x00", "alice\x00", "ali\u202ece", "al\u200bice", "\ufeffalice", "ａｌｉｃｅ",
             "аlice", "ali\u0301ce", "\U0001f600\U0001f600\U0001f600", "al ice", "al\tice", "al\nice", "a/../b",
             "\ud7ff\ue000\uffff", "ǅǆǄ", "alice\u0000" + "x" * 20]
TOKEN_IDS = ["a\x00b", "\x00", "h\u202e1", "h\u200b1", "ｈ1", "һ1", "h1\U0001f600", "h 1", "h\n1", "h/1", "h.1",
             "h%001", "a" * 65, ""]


async def test_nul_and_odd_unicode_in_usernames(api: Api) -> None:
    before = await api.snapshot()
    for name in USERNAMES:
        expect(await api.c.post("/register", json={"username": name, "password": "correct horse battery"}),
               422, "validation_error", name)
        # The same password under a lookalike name: the one answer for a wrong username or password.
        expect(await api.c.post("/login", json={"username": name, "password": "correct horse battery"}),
               401, "invalid_credentials", name)
    # Longer than any username can be: refused before any lookup.
    expect(await api.c.post("/login", json={"username": "\x00" * 65, "password": "correct horse battery"}),
           422, "validation_error")
    assert await api.snapshot() == before
    assert (await api.c.post("/login", json={"username": "alice", "password": "correct horse battery"})).status_code == 200


async def test_nul_and_odd_unicode_in_token_ids(api: Api) -> None:
    before = await api.snapshot()
    for tid in TOKEN_IDS:
        expect(await api.c.post("/orders", json={**ORDER, "token_id": tid}, headers=api.alice), 422,
               "invalid_field", tid)
        if not tid or "/" in tid:
            continue  # another route, or none
        quoted = "/orders/" + urllib.parse.quote(tid, safe="")
        for method in ("GET", "DELETE", "PUT"):
            kw: dict[str, Any] = {"json": {"quantity": "0.2"}} if method == "PUT" else {}
            expect(await api.c.request(method, quoted, headers=api.alice, **kw), 404, "order_not_found", (method, tid))
    assert await api.snapshot() == before


async def test_73_byte_passwords(api: Api) -> None:
    """bcrypt reads 72 bytes: a 73rd byte is refused at register and at login, so a password never logs in by its
    72-byte prefix (nor the prefix by the password)."""
    p72 = "p" * 72
    assert (await api.c.post("/register", json={"username": "bob72", "password": p72})).status_code == 201
    before = await api.snapshot()
    for p73 in ("p" * 73, p72 + "x", "p" * 71 + "é", "\U0001f600" * 18 + "x"):
        assert len(p73.encode()) == 73
        expect(await api.c.post("/register", json={"username": "carol73", "password": p73}), 422, "validation_error")
        expect(await api.c.post("/login", json={"username": "bob72", "password": p73}), 422, "validation_error")
        form = {"username": "bob72", "password": p73, "grant_type": "password"}
        expect(await api.c.post("/login", data=form), 422, "validation_error")
    assert await api.snapshot() == before
    assert (await api.c.post("/login", json={"username": "bob72", "password": p72})).status_code == 200
    expect(await api.c.post("/login", json={"username": "carol73", "password": "p" * 72}), 401, "invalid_credentials")


def _b64(o: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_every_jwt_forgery_on_every_route(api: Api) -> None:
    secret = api.settings.auth.jwt_secret
    now = int(time.time())
    good = {"sub": "alice-id", "iat": now, "exp": now + 600}
    forged = {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}.",
        "alg None": f"{_b64({'alg': 'None', 'typ': 'JWT'})}.{_b64(good)}.",
        "alg none, signed": f"{_b64({'alg': 'none'})}.{_b64(good)}.{jwt.encode(good, secret).rsplit('.', 1)[1]}",
        "wrong key": jwt.encode(good, "another-secret-" + "y" * 32, algorithm="HS256"),
        "HS512": jwt.encode(good, secret, algorithm="HS512"),
        "expired": tokens.issue("alice-id", secret, 60, now=now - 3600),
        "no exp": jwt.encode({"sub": "alice-id", "iat": now}, secret, algorithm="HS256"),
        "no iat": jwt.encode({"sub": "alice-id", "exp": now + 600}, secret, algorithm="HS256"),
        "no sub": jwt.encode({"iat": now, "exp": now + 600}, secret, algorithm="HS256"),
        "integer sub": jwt.encode({**good, "sub": 123}, secret, algorithm="HS256"),
        "empty sub": jwt.encode({**good, "sub": ""}, secret, algorithm="HS256"),
        "list sub": jwt.encode({**good, "sub": ["alice-id"]}, secret, algorithm="HS256"),
        "string exp": jwt.encode({**good, "exp": "never"}, secret, algorithm="HS256"),
        "tampered payload": ".".join([jwt.encode(good, secret).split(".")[0], _b64({**good, "sub": "bob-id"}),
                                      jwt.encode(good, secret).split(".")[2]]),
        "no signature": jwt.encode(good, secret).rsplit(".", 1)[0] + ".",
    }
    before = await api.snapshot()
    bodies = {"/deposit": BODIES[0][2], "/orders": {**ORDER, "token_id": "forged"}, "/orders/alice-1": BODIES[2][2]}
    for name, token in forged.items():
        for method, path in AUTHED:
            kw: dict[str, Any] = {"json": bodies[path]} if method in ("POST", "PUT") else {}
            r = await api.c.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
            expect(r, 401, "invalid_token", (name, method, path))
            assert r.headers["www-authenticate"] == "Bearer"
    assert await api.snapshot() == before


async def test_another_users_token_id(api: Api) -> None:
    """Bob's order, addressed by Alice on every order route: 404 as if it did not exist, Bob's order untouched."""
    before = await api.snapshot()
    bob_order = (await api.c.get("/orders/bob-1", headers=api.bob)).json()
    expect(await api.c.get("/orders/bob-1", headers=api.alice), 404, "order_not_found")
    expect(await api.c.delete("/orders/bob-1", headers=api.alice), 404, "order_not_found")
    for body in ({"price": "101"}, {"quantity": "0.5"}, {"price": "99", "quantity": "0.2"}):
        expect(await api.c.put("/orders/bob-1", json=body, headers=api.alice), 404, "order_not_found")
    assert (await api.c.get("/orders/bob-1", headers=api.bob)).json() == bob_order
    listed = (await api.c.get("/orders", headers=api.alice)).json()
    assert [o["token_id"] for o in listed["orders"]] == ["alice-1"]
    assert (await api.c.get("/fills", headers=api.alice)).json()["total"] == 0
    assert await api.snapshot() == before
    # Alice may use the same token_id for an order of her own: ids are per user.
    assert (await api.c.post("/orders", json={**ORDER, "token_id": "bob-1"}, headers=api.alice)).status_code == 201
    assert (await api.c.get("/orders/bob-1", headers=api.bob)).json() == bob_order


async def test_unknown_fields(api: Api) -> None:
    extras: list[dict[str, Any]] = [{"admin": True}, {"user_id": "bob-id"}, {"": 1}, {"\x00": 1}, {"Amount": "5"},
                                    {"status": "filled"}, {"__proto__": {}}]
    cases = []
    for extra in extras:
        for method, path, body in BODIES:
            cases.append((method, path, json.dumps({**body, **extra}).encode(), 422, "unknown_field"))
        for path in ("/register", "/login"):
            creds = {"username": "alice", "password": "correct horse battery", **extra}
            cases.append(("POST", path, json.dumps(creds).encode(), 422, "validation_error"))
    await send_all(api, cases, api.alice)


async def test_account_routes_refuse_hostile_input(api: Api) -> None:
    """``PUT /me/password``, ``/api-keys`` and ``POST /logout`` with spoiled bodies, odd ids, forged tokens and
    forged API keys: each a clean 4xx, nothing written."""
    tok = (await api.c.post("/login", json={"username": "alice", "password": "correct horse battery"})).json()
    me = {"Authorization": f"Bearer {tok['access_token']}"}
    pw = {"current_password": "correct horse battery", "new_password": "another horse"}
    key = {"name": "bot", "scopes": ["read"]}
    cases: list[tuple[str, str, bytes, int, str]] = []
    for path, method, body in (("/me/password", "PUT", pw), ("/api-keys", "POST", key)):
        for field in body:
            for lit in ("NaN", "Infinity"):
                cases.append((method, path, raw(body, field, lit), 400, "invalid_json"))
            for lit in ("1e400", "null", "true", "{}"):
                cases.append((method, path, raw(body, field, lit), 422, "validation_error"))
        # a NUL is a possible password (checked: wrong), too short for a new one, not printable in a key name
        for field in body:
            status, code = (403, "wrong_password") if field == "current_password" else (422, "validation_error")
            cases.append((method, path, raw(body, field, '"\\u0000"'), status, code))
        cases.append((method, path, json.dumps({**body, "admin": True}).encode(), 422, "validation_error"))
        cases.append((method, path, b"[" * 30_000 + b"]" * 30_000, 400, "invalid_json"))
        cases.append((method, path, b"[" * 100_000, 413, "payload_too_large"))
        cases.append((method, path, b"", 422, "validation_error"))
    for p73 in ("p" * 73, "\U0001f600" * 18 + "x"):
        cases.append(("PUT", "/me/password", json.dumps({**pw, "new_password": p73}).encode(), 422,
                      "validation_error"))
    for name in ("", " bot", "bot ", "b\x00t", "b\u202et", "b\nt", "x" * 65):
        cases.append(("POST", "/api-keys", json.dumps({**key, "name": name}).encode(), 422, "validation_error"))
    for scopes in ([], ["admin"], ["read", "read"], "read", [["read"]], ["READ"], ["read", "trade", "read"]):
        cases.append(("POST", "/api-keys", json.dumps({**key, "scopes": scopes}).encode(), 422, "validation_error"))
    for exp in (0, 59, -1, 10**12, 1.5, "60", True):
        cases.append(("POST", "/api-keys", json.dumps({**key, "expires_in_s": exp}).encode(), 422,
                      "validation_error"))
    await send_all(api, cases, me)

    before = await api.snapshot()
    for kid in ("nope", "%00", "a" * 64, "a..b", "%E2%80%AE", "%7Bu:x%7D"):
        expect(await api.c.delete(f"/api-keys/{kid}", headers=me), 404, "key_not_found", kid)
    expect(await api.c.delete(f"/api-keys/{'a' * 65}", headers=me), 422, "validation_error")
    fake_keys = ["srk_", "srk_" + "%00" * 40, "srk_" + "a" * 32 + "_" + "b" * 16 + "_" + "c" * 43,
                 "srk_" + "a" * 32 + "_" + "b" * 16 + "_" + "c" * 4000, "srk_../../etc", "srk_{u:x}_y_z"]
    for fake in fake_keys:
        for method, path in (("GET", "/me"), ("GET", "/balance"), ("POST", "/logout"), ("GET", "/api-keys")):
            r = await api.c.request(method, path, headers={"Authorization": f"Bearer {fake}"})
            expect(r, 401, "invalid_token", (fake[:20], path))
    now = int(time.time())
    for token in (jwt.encode({"sub": "alice-id", "iat": now, "exp": now + 600, "jti": 5}, api.settings.auth.jwt_secret,
                             algorithm="HS256"),
                  jwt.encode({"sub": "alice-id", "iat": now, "exp": now + 600, "gen": -1},
                             api.settings.auth.jwt_secret, algorithm="HS256"),
                  jwt.encode({"sub": "al{ice", "iat": now, "exp": now + 600}, api.settings.auth.jwt_secret,
                             algorithm="HS256"),
                  jwt.encode({"sub": "alice-id", "iat": now, "exp": now + 600}, "wrong-secret-" + "z" * 40,
                             algorithm="HS256")):
        for method, path in (("POST", "/logout"), ("GET", "/api-keys"), ("DELETE", "/api-keys/x")):
            expect(await api.c.request(method, path, headers={"Authorization": f"Bearer {token}"}), 401,
                   "invalid_token", path)
    assert await api.snapshot() == before
    assert (await api.c.get("/me", headers=me)).status_code == 200
