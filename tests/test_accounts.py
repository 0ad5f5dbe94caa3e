"""Logout, password change, API keys with scopes, registration limits and the hashing queue: real HTTP and
WebSockets against real gateways (in-process, and two ``python -m gateway`` processes sharing one Redis)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.services import credentials as cr
from gateway.services import principals as pr
from shared import names, tokens
from shared.errors import DomainError
from tests.gateway_proc import gateway_process
from tests.servers import run_gateway
from tests.wsclient import Client, ws_url

PASSWORD = "password-one"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def signup(c: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD) -> tuple[str, str]:
    r = await c.post("/register", json={"username": username, "password": password})
    assert r.status_code == 201, r.text
    return r.json()["access_token"], r.json()["user"]["id"]


async def login(c: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD) -> str:
    r = await c.post("/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    tok: str = r.json()["access_token"]
    return tok


async def new_key(c: httpx.AsyncClient, token: str, *scopes: str, name: str = "bot") -> dict[str, Any]:
    r = await c.post("/api-keys", json={"name": name, "scopes": list(scopes)}, headers=bearer(token))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def closed(c: Client, within: float = 10.0) -> tuple[int | None, str]:
    """The close code and reason once the server closed ``c`` (frames before it are read and dropped)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(c.conn.recv(), max(0.01, end - loop.time()))
    return c.conn.close_code, c.conn.close_reason or ""


async def authed_ws(base: str, credential: str, how: str) -> tuple[Client, Any]:
    """A WebSocket authenticated with ``credential`` by ``how``: ``query``, ``header`` or ``message``."""
    url, headers = ws_url(base), None
    if how == "query":
        url += f"?token={credential}"
    elif how == "header":
        headers = {"Authorization": f"Bearer {credential}"}
    cm = connect(url, additional_headers=headers, open_timeout=10, close_timeout=2)
    conn = await cm.__aenter__()
    c = Client(conn)
    if how == "message":
        reply = await c.request({"action": "auth", "token": credential, "id": 1}, within=10)
        assert reply["type"] == "auth" and reply["status"] == "ok", reply
    else:
        assert (await c.request({"action": "ping"}, within=10))["type"] == "pong"
    return c, cm


# -- pure parts ------------------------------------------------------------------------------------------------


def test_key_format_and_revocation_rules() -> None:
    kid, secret, whole = pr.new_key("ab" * 16)
    assert pr.parse_key(whole) == ("ab" * 16, kid, secret)
    for bad in ("", "srk_", whole + "x", whole.replace("srk_", "srx_"), whole[:-1], "srk_" + "g" * 32 + whole[36:]):
        assert pr.parse_key(bad) is None
    assert pr.effective_scopes(["trade"]) == {"read", "trade"} and pr.effective_scopes(["read"]) == {"read"}
    key = pr.ApiKey(id=kid, name="n", scopes=("read",), created_us=1, expires_us=100, digest=pr.digest(secret))
    assert pr.ApiKey.from_json(key.to_json()) == key
    state = pr.UserAuth(gen=2, revoked=frozenset({"j1"}), keys={kid: key}, until=0)
    tok = pr.Principal("u", "token", "j2", frozenset(pr.SCOPES), gen=2)
    assert pr.why_revoked(tok, state, 50) is None
    assert "password" in (pr.why_revoked(pr.Principal("u", "token", "j2", frozenset(), gen=1), state, 50) or "")
    assert "logged out" in (pr.why_revoked(pr.Principal("u", "token", "j1", frozenset(), gen=2), state, 50) or "")
    pk = pr.Principal("u", "key", kid, frozenset({"read"}))
    assert pr.why_revoked(pk, state, 50) is None
    assert pr.why_revoked(pk, state, 100) == "API key expired"
    assert pr.why_revoked(pr.Principal("u", "key", "other", frozenset()), state, 50) == "API key deleted"


# -- logout and password, one gateway --------------------------------------------------------------------------


async def test_logout_revokes_only_that_token(redis_url: str, aredis: aioredis.Redis) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        first, uid = await signup(c)
        second = await login(c)
        assert (await c.get("/me", headers=bearer(first))).status_code == 200
        r = await c.post("/logout", headers=bearer(first))
        assert r.status_code == 204, r.text
        r = await c.get("/me", headers=bearer(first))
        assert r.status_code == 401 and r.json()["code"] == "invalid_token" and "logged out" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert (await c.get("/balance", headers=bearer(first))).status_code == 401
        assert (await c.post("/logout", headers=bearer(first))).status_code == 401
        assert (await c.get("/me", headers=bearer(second))).status_code == 200
        assert (await c.post("/logout")).status_code == 401
    # kept only as long as the token lives
    key = names.revoked_tokens_key(uid)
    assert 0 < await aredis.ttl(key) <= 86400 + 1
    assert len(await aredis.hgetall(key)) == 1


async def test_logout_of_a_token_without_jti(redis_url: str) -> None:
    """Tokens issued before ``jti`` existed are revoked by their hash."""
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        _, uid = await signup(c)
        import jwt
        now = int(time.time())
        old = jwt.encode({"sub": uid, "iat": now, "exp": now + 600}, "test-secret-" + "x" * 32, algorithm="HS256")
        other = jwt.encode({"sub": uid, "iat": now - 1, "exp": now + 600}, "test-secret-" + "x" * 32,
                           algorithm="HS256")
        assert (await c.post("/logout", headers=bearer(old))).status_code == 204
        assert (await c.get("/me", headers=bearer(old))).status_code == 401
        assert (await c.get("/me", headers=bearer(other))).status_code == 200


async def test_password_change_revokes_older_tokens(redis_url: str) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        first, _ = await signup(c)
        second = await login(c)
        body = {"current_password": "wrong-password", "new_password": "password-two"}
        r = await c.put("/me/password", json=body, headers=bearer(first))
        assert r.status_code == 403 and r.json()["code"] == "wrong_password", r.text
        assert (await c.get("/me", headers=bearer(first))).status_code == 200  # nothing changed
        r = await c.put("/me/password", json={"current_password": PASSWORD, "new_password": "x"},
                        headers=bearer(first))
        assert r.status_code == 422
        r = await c.put("/me/password", json={"current_password": PASSWORD, "new_password": "password-two"},
                        headers=bearer(first))
        assert r.status_code == 200, r.text
        fresh = r.json()["access_token"]
        for old in (first, second):
            r = await c.get("/me", headers=bearer(old))
            assert r.status_code == 401 and "password was changed" in r.json()["detail"]
        assert (await c.get("/me", headers=bearer(fresh))).status_code == 200
        r = await c.post("/login", json={"username": "alice", "password": PASSWORD})
        assert r.status_code == 401
        again = await login(c, password="password-two")
        assert (await c.get("/me", headers=bearer(again))).status_code == 200
        # a second change outdates the token the first one returned
        r = await c.put("/me/password", json={"current_password": "password-two", "new_password": "password-3"},
                        headers=bearer(again))
        assert r.status_code == 200
        assert (await c.get("/me", headers=bearer(fresh))).status_code == 401


async def test_wrong_current_password_is_rate_limited(redis_url: str) -> None:
    async with run_gateway(redis_url, SR_AUTH__LOGIN_FAILURES_PER_USER="2") as base, \
            httpx.AsyncClient(base_url=base) as c:
        tok, _ = await signup(c)
        body = {"current_password": "wrong-password", "new_password": "password-two"}
        codes = [(await c.put("/me/password", json=body, headers=bearer(tok))).status_code for _ in range(4)]
        assert codes == [403, 403, 429, 429]


# -- API keys --------------------------------------------------------------------------------------------------


async def test_api_keys_scopes_and_listing(redis_url: str, aredis: aioredis.Redis) -> None:
    async with run_gateway(redis_url, SR_AUTH__API_KEYS_PER_USER="3") as base, \
            httpx.AsyncClient(base_url=base) as c:
        tok, uid = await signup(c)
        read = await new_key(c, tok, "read", name="reader")
        trade = await new_key(c, tok, "trade", name="trader")
        assert read["key"].startswith("srk_") and read["scopes"] == ["read"] and read["last_used_us"] is None
        assert read["expires_us"] is None and set(read) == {"id", "name", "scopes", "created_us", "expires_us",
                                                              "last_used_us", "key"}
        rk, tk = bearer(read["key"]), bearer(trade["key"])

        assert (await c.get("/me", headers=rk)).json()["id"] == uid
        assert (await c.get("/balance", headers=rk)).status_code == 200
        assert (await c.get("/orders", headers=rk)).status_code == 200
        order = {"token_id": "k1", "symbol": "BTCUSDT", "side": "buy", "type": "limit", "price": "100",
                 "quantity": "0.1"}
        r = await c.post("/orders", json=order, headers=rk)
        assert r.status_code == 403 and r.json()["code"] == "insufficient_scope", r.text
        for call in (c.delete("/orders/k1", headers=rk), c.put("/orders/k1", json={"price": "99"}, headers=rk),
                     c.post("/deposit", json={"asset": "USDT", "amount": "100"}, headers=rk)):
            r = await call
            assert r.status_code == 403 and r.json()["code"] == "insufficient_scope", r.text
        r = await c.post("/deposit", json={"asset": "USDT", "amount": "1000"}, headers=tk)
        assert r.status_code == 200, r.text
        r = await c.post("/orders", json=order, headers=tk)
        assert r.status_code == 201, r.text
        assert (await c.get("/orders/k1", headers=rk)).json()["status"] == "open"

        # keys cannot manage the account
        for call in (c.post("/api-keys", json={"name": "x", "scopes": ["read"]}, headers=tk),
                     c.get("/api-keys", headers=tk), c.delete(f"/api-keys/{read['id']}", headers=tk),
                     c.post("/logout", headers=tk),
                     c.put("/me/password", json={"current_password": PASSWORD, "new_password": "password-2"},
                           headers=tk)):
            r = await call
            assert r.status_code == 403 and r.json()["code"] == "session_required", r.text

        r = await c.get("/api-keys", headers=bearer(tok))
        listed = r.json()
        assert [k["name"] for k in listed] == ["reader", "trader"] and all("key" not in k for k in listed)
        assert all(isinstance(k["last_used_us"], int) for k in listed)

        await new_key(c, tok, "read", name="third")
        r = await c.post("/api-keys", json={"name": "fourth", "scopes": ["read"]}, headers=bearer(tok))
        assert r.status_code == 409 and r.json()["code"] == "too_many_keys"

        for bad in ({"name": "", "scopes": ["read"]}, {"name": "x", "scopes": []}, {"name": "x", "scopes": ["admin"]},
                    {"name": "x", "scopes": ["read", "read"]}, {"name": "x", "scopes": ["read"], "expires_in_s": 1},
                    {"name": "x\n", "scopes": ["read"]}, {"name": "x", "scopes": ["read"], "bogus": 1}):
            r = await c.post("/api-keys", json=bad, headers=bearer(tok))
            assert r.status_code == 422, (bad, r.text)

        # deleted: 401 at once; unknown: 404
        assert (await c.delete(f"/api-keys/{read['id']}", headers=bearer(tok))).status_code == 204
        r = await c.get("/me", headers=rk)
        assert r.status_code == 401 and r.json()["code"] == "invalid_token"
        r = await c.delete(f"/api-keys/{read['id']}", headers=bearer(tok))
        assert r.status_code == 404 and r.json()["code"] == "key_not_found"
        # a key with a wrong secret, or of another user id
        wrong = trade["key"][:-4] + ("AAAA" if not trade["key"].endswith("AAAA") else "BBBB")
        assert (await c.get("/me", headers=bearer(wrong))).status_code == 401
        assert (await c.get("/me", headers=bearer("srk_" + "0" * 32 + trade["key"][36:]))).status_code == 401
        assert (await c.get("/me", headers=bearer("srk_garbage"))).status_code == 401

    # only the hash is stored
    stored = b"".join(v for v in (await aredis.hgetall(names.api_keys_key(uid))).values())
    parsed = pr.parse_key(trade["key"])
    assert parsed is not None
    assert parsed[2].encode() not in stored and pr.digest(parsed[2]).encode() in stored
    assert read["id"].encode() not in b"".join(await aredis.hkeys(names.api_keys_key(uid)))
    assert read["id"].encode() not in b"".join(await aredis.hkeys(names.api_keys_used_key(uid)))


@pytest.mark.parametrize("how", ["query", "header", "message"])
async def test_api_key_on_the_websocket(redis_url: str, how: str) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        tok, uid = await signup(c)
        read = await new_key(c, tok, "read")
        trade = await new_key(c, tok, "trade")
        ws, cm = await authed_ws(base, read["key"], how)
        try:
            r = await ws.request({"action": "place_order", "token_id": "w1", "symbol": "BTCUSDT", "side": "buy",
                                  "type": "limit", "price": "100", "quantity": "0.1", "id": 2})
            assert r["type"] == "error" and r["code"] == "insufficient_scope", r
            r = await ws.request({"action": "cancel_order", "token_id": "w1", "id": 3})
            assert r["type"] == "error" and r["code"] == "insufficient_scope", r
            assert (await ws.request({"action": "balance", "id": 4}))["type"] == "ack"
            await ws.subscribe(stream="orders")
            # the same connection may re-authenticate with the user's trade key
            r = await ws.request({"action": "auth", "token": trade["key"], "id": 5})
            assert r["type"] == "auth" and r["user_id"] == uid
            r = await ws.request({"action": "place_order", "token_id": "w1", "symbol": "BTCUSDT", "side": "buy",
                                  "type": "limit", "price": "100", "quantity": "0.1", "id": 6})
            assert r["type"] == "error" and r["code"] == "insufficient_balance", r  # allowed, just no funds
            # deleting the key in use closes the connection
            assert (await c.delete(f"/api-keys/{trade['id']}", headers=bearer(tok))).status_code == 204
            code, reason = await closed(ws)
            assert code == 4001 and reason == "API key deleted"
        finally:
            await cm.__aexit__(None, None, None)
        # a deleted key is refused at connect
        ws2, cm2 = await authed_ws(base, read["key"], how)
        try:
            assert (await c.delete(f"/api-keys/{read['id']}", headers=bearer(tok))).status_code == 204
            assert await closed(ws2) == (4001, "API key deleted")
        finally:
            await cm2.__aexit__(None, None, None)
        url = ws_url(base) + f"?token={read['key']}"
        async with connect(url, open_timeout=10) as conn:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(conn.recv(), 10)
            assert conn.close_code == 1008 and "unknown or deleted API key" in (conn.close_reason or "")


# -- two gateway processes -------------------------------------------------------------------------------------


async def test_revocation_reaches_the_other_gateway(redis_url: str, tmp_path: Path) -> None:
    with gateway_process(redis_url, tmp_path) as ga, gateway_process(redis_url, tmp_path) as gb:
        async with httpx.AsyncClient(base_url=ga.url, timeout=30) as a, \
                httpx.AsyncClient(base_url=gb.url, timeout=30) as b:
            tok, uid = await signup(a)
            other = await login(a)
            key = await new_key(a, tok, "read")
            # B has seen (and keeps) all three before any change
            for t in (tok, other, key["key"]):
                assert (await b.get("/me", headers=bearer(t))).status_code == 200
            ws_tok, cm_tok = await authed_ws(gb.url, tok, "query")
            ws_other, cm_other = await authed_ws(gb.url, other, "message")
            ws_key, cm_key = await authed_ws(gb.url, key["key"], "header")
            try:
                # logout on A: B refuses the token and closes its socket; the other token stays
                assert (await a.post("/logout", headers=bearer(tok))).status_code == 204
                assert await closed(ws_tok) == (4001, "token revoked (logged out)")
                assert (await b.get("/me", headers=bearer(tok))).status_code == 401
                assert (await b.get("/me", headers=bearer(other))).status_code == 200
                assert (await ws_other.request({"action": "ping"}))["type"] == "pong"

                # a key deleted on A
                assert (await a.delete(f"/api-keys/{key['id']}", headers=bearer(other))).status_code == 204
                assert await closed(ws_key) == (4001, "API key deleted")
                assert (await b.get("/me", headers=bearer(key["key"]))).status_code == 401

                # a password changed on B: every older token refused on A, the other socket closed
                r = await b.put("/me/password", json={"current_password": PASSWORD, "new_password": "password-2"},
                                headers=bearer(other))
                assert r.status_code == 200, r.text
                assert await closed(ws_other) == (4001, "token revoked: the password was changed")
                assert (await a.get("/me", headers=bearer(other))).status_code == 401
                assert (await a.get("/me", headers=bearer(r.json()["access_token"]))).status_code == 200
                # a key made on A is accepted on B at once
                fresh = await new_key(a, r.json()["access_token"], "trade")
                assert (await b.get("/me", headers=bearer(fresh["key"]))).json()["id"] == uid
                # what each gateway counted
                assert ga.metric("sr_gateway_revocations_total", kind="logout") == 1
                assert ga.metric("sr_gateway_revocations_total", kind="key_deleted") == 1
                assert gb.metric("sr_gateway_revocations_total", kind="password") == 1
                assert gb.metric("sr_gateway_ws_revoked_closes_total") == 3
                assert ga.metric("sr_gateway_ws_revoked_closes_total") == 0
            finally:
                for cm in (cm_tok, cm_other, cm_key):
                    await cm.__aexit__(None, None, None)


# -- registration limits and the hashing queue -----------------------------------------------------------------


async def test_registration_rate_limit_per_address(redis_url: str, aredis: aioredis.Redis) -> None:
    async with run_gateway(redis_url, SR_AUTH__REGISTRATIONS_PER_IP="3") as base, \
            httpx.AsyncClient(base_url=base) as c:
        rs = [await c.post("/register", json={"username": f"user{i}", "password": PASSWORD}) for i in range(5)]
        assert [r.status_code for r in rs] == [201, 201, 201, 429, 429]
        r = rs[3]
        assert r.json()["code"] == "rate_limited" and "address" in r.json()["detail"]
        assert 3000 < int(r.headers["retry-after"]) <= 3600
        assert (await c.post("/login", json={"username": "user0", "password": PASSWORD})).status_code == 200
    assert not await aredis.exists(names.username_key("user3"))
    assert 0 < await aredis.ttl(names.register_ip_key("127.0.0.1")) <= 3600


async def test_registration_rate_limit_global(redis_url: str) -> None:
    async with run_gateway(redis_url, SR_AUTH__REGISTRATIONS_GLOBAL="2",
                           SR_AUTH__REGISTRATION_GLOBAL_WINDOW_S="30") as base, \
            httpx.AsyncClient(base_url=base) as c:
        rs = await asyncio.gather(*(c.post("/register", json={"username": f"glob{i}", "password": PASSWORD})
                                    for i in range(6)))
        codes = sorted(r.status_code for r in rs)
        assert codes == [201, 201, 429, 429, 429, 429], codes
        limited = [r for r in rs if r.status_code == 429]
        assert all("server" in r.json()["detail"] and 0 < int(r.headers["retry-after"]) <= 30 for r in limited)


async def test_full_hashing_queue_answers_503_at_once(redis_url: str) -> None:
    """One hash at a time, one waiting (registrations: also one): a burst gets 503 with Retry-After for the rest,
    and a request that got in still succeeds."""
    async with run_gateway(redis_url, SR_AUTH__BCRYPT_ROUNDS="10", SR_AUTH__MAX_CONCURRENT_HASHES="1",
                           SR_AUTH__MAX_WAITING_HASHES="1", SR_AUTH__LOGIN_FAILURES_PER_IP="1000",
                           SR_AUTH__LOGIN_FAILURES_PER_USER="1000") as base, \
            httpx.AsyncClient(base_url=base, timeout=60) as c:
        await signup(c)
        rs = await asyncio.gather(*(c.post("/login", json={"username": "alice", "password": PASSWORD})
                                    for _ in range(12)))
        codes = [r.status_code for r in rs]
        assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
        for r in rs:
            if r.status_code == 503:
                assert r.json()["code"] == "busy" and int(r.headers["retry-after"]) >= 1
        rs = await asyncio.gather(*(c.post("/register", json={"username": f"busy{i}", "password": PASSWORD})
                                    for i in range(12)))
        codes = [r.status_code for r in rs]
        assert codes.count(201) >= 1 and codes.count(503) >= 1 and set(codes) <= {201, 503}, codes
        # nothing half-done: every refused name is free
        for i, r in enumerate(rs):
            if r.status_code == 503:
                r2 = await c.post("/login", json={"username": f"busy{i}", "password": PASSWORD})
                assert r2.status_code in (401, 503)


async def test_token_cache_lives_as_long_as_the_token() -> None:
    cache = tokens.VerifiedTokens()
    now = time.time()
    tok = tokens.issue("u1", "s" * 40, 3600, now=now)
    c = cache.claims(tok, "s" * 40, now=now)
    assert cache._seen[(tok, "s" * 40)][1] == c.exp == int(now) + 3600
    assert cache.claims(tok, "s" * 40, now=now + 3000) is c  # a hit 50 minutes later: no second verification


async def test_logins_wait_before_new_passwords_in_the_hashing_queue() -> None:
    from gateway.services.accounts import PasswordHasher, _Slots

    hasher = PasswordHasher(rounds=4, max_concurrent=1, max_waiting=16)
    await hasher.start()
    hashed = await hasher.hash("password-x")
    done: list[str] = []

    async def job(name: str, coro: Any) -> None:
        await coro
        done.append(name)

    tasks = [asyncio.create_task(job(f"reg{i}", hasher.hash("password-y"))) for i in range(4)]
    await asyncio.sleep(0)  # every registration queued (the first one running)
    tasks.append(asyncio.create_task(job("login", hasher.verify("password-x", hashed))))
    await asyncio.gather(*tasks)
    assert done.index("login") <= 1, done  # at most the registration already running finished before it

    # a waiter cancelled, before or after being handed the slot, never loses it
    slots = _Slots(1)
    await slots.acquire(1)
    waiter = asyncio.create_task(slots.acquire(0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    handed = asyncio.create_task(slots.acquire(1))
    await asyncio.sleep(0)
    slots.release()  # handed to ``handed``...
    handed.cancel()  # ...which is cancelled before it runs: the slot goes back
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert slots.free == 1


async def test_state_is_read_once_for_concurrent_requests_and_again_after_a_change(redis_url: str) -> None:
    from shared.redis_conn import connect_any
    from tests.servers import make_settings

    settings = make_settings(redis_url)
    r = connect_any(redis_url, settings.redis.cluster)
    creds = cr.Credentials(r, settings)
    await creds.start()
    reads = 0
    real_read = creds._read

    async def counted(user_id: str) -> pr.UserAuth:
        nonlocal reads
        reads += 1
        return await real_read(user_id)

    creds._read = counted  # type: ignore[method-assign]
    try:
        tok = tokens.issue("someone", settings.auth.jwt_secret, 600)
        ps = await asyncio.gather(*(creds.authenticate(tok) for _ in range(50)))
        assert {p.user_id for p in ps} == {"someone"} and reads == 1
        await creds.authenticate(tok)
        assert reads == 1  # kept: no round trip
        await creds.logout(ps[0])
        with pytest.raises(DomainError) as e:
            await creds.authenticate(tok)
        assert e.value.code == "invalid_token" and reads == 2
    finally:
        await creds.stop()
        await r.aclose()


async def test_an_expiring_key_stops_working_and_closes_its_socket(redis_url: str, aredis: aioredis.Redis) -> None:
    import orjson

    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        tok, uid = await signup(c)
        r = await c.post("/api-keys", json={"name": "short", "scopes": ["read"], "expires_in_s": 60},
                         headers=bearer(tok))
        assert r.status_code == 201 and r.json()["expires_us"] > r.json()["created_us"]
        key = r.json()
        # Sixty seconds are long for a test: the stored expiry is brought to 5 s from now, then announced as
        # any change is (another key made), so the gateway reads it again.
        rec = orjson.loads(await aredis.hget(names.api_keys_key(uid), key["id"]))
        rec["expires_us"] = int((time.time() + 5) * 1e6)
        await aredis.hset(names.api_keys_key(uid), key["id"], orjson.dumps(rec))
        await new_key(c, tok, "read", name="other")
        ws, cm = await authed_ws(base, key["key"], "message")
        try:
            assert await closed(ws, within=30) == (4001, "API key expired")
        finally:
            await cm.__aexit__(None, None, None)
        # a new connection (the pooled one has sat idle through the wait above)
        async with httpx.AsyncClient(base_url=base) as fresh:
            r = await fresh.get("/me", headers=bearer(key["key"]))
        assert r.status_code == 401 and r.json()["detail"] == "API key expired"
