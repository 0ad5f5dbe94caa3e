"""Accounts over real HTTP against the real app and a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from gateway.app import GatewayConfigError, create_app
from shared import names, tokens
from tests.servers import make_settings, run_gateway

SECRET = "test-secret-" + "x" * 32  # the one tests/servers.py configures
ROOT = Path(__file__).resolve().parent.parent


async def register(c: httpx.AsyncClient, username: str = "alice", password: str = "password1") -> httpx.Response:
    return await c.post("/register", json={"username": username, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_register_login_me(redis_url: str, aredis: aioredis.Redis) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        r = await register(c)
        assert r.status_code == 201, r.text
        out = r.json()
        assert set(out) == {"access_token", "token_type", "expires_in", "user"}
        assert out["token_type"] == "bearer" and out["expires_in"] == 86400
        user = out["user"]
        assert user["username"] == "alice" and len(user["id"]) == 32 and isinstance(user["created_us"], int)
        assert tokens.verify(out["access_token"], SECRET) == user["id"]

        r = await c.get("/me", headers=bearer(out["access_token"]))
        assert r.status_code == 200 and r.json() == user

        r = await c.post("/login", json={"username": "alice", "password": "password1"})
        assert r.status_code == 200, r.text
        login = r.json()
        assert set(login) == {"access_token", "token_type", "expires_in"} and login["token_type"] == "bearer"
        assert (await c.get("/me", headers=bearer(login["access_token"]))).json()["id"] == user["id"]

        # usernames are unique regardless of case, and login ignores case too
        r = await register(c, "ALICE")
        assert r.status_code == 409 and r.json()["code"] == "username_taken"
        r = await c.post("/login", json={"username": "Alice", "password": "password1"})
        assert r.status_code == 200

    # stored: a bcrypt hash, never the password; the name index points at the record
    raw = await aredis.hgetall(names.user_key(user["id"]))
    assert raw[b"pw_hash"].startswith(b"$2b$04$") and b"password1" not in b"".join(raw.values())
    assert await aredis.get(names.username_key("alice")) == user["id"].encode()


async def test_duplicate_race_creates_one_user(redis_url: str, aredis: aioredis.Redis) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        rs = await asyncio.gather(*(register(c, "racer", f"password-{i}") for i in range(50)))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(201) == 1 and codes.count(409) == 49, codes
    assert all(r.json()["code"] == "username_taken" for r in rs if r.status_code == 409)
    # no orphan records left by the losers
    assert len([k async for k in aredis.scan_iter(match="user:{*}")]) == 1


@pytest.mark.parametrize("password,status", [
    ("a" * 72, 201), ("a" * 73, 422), ("\u00e9" * 36, 201), ("\u00e9" * 36 + "a", 422),
    ("\u20ac" * 24, 201), ("\u20ac" * 25, 422), ("\U0001f600" * 18, 201), ("\U0001f600" * 18 + "a", 422),
    ("a" * 8, 201), ("a" * 7, 422), ("\u00e9" * 4, 201), ("\u00e9" * 3 + "a", 422), ("", 422),
    ("a" * 10_000, 422), ("pass\x00word", 201),
])
async def test_password_length_in_utf8_bytes(redis_url: str, password: str, status: int) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        r = await register(c, "bob", password)
        assert r.status_code == status, r.text
        if status == 201:
            assert (await c.post("/login", json={"username": "bob", "password": password})).status_code == 200
            wrong = password[:-1] + ("b" if password[-1] != "b" else "c")
            assert (await c.post("/login", json={"username": "bob", "password": wrong})).status_code == 401
        else:
            body = r.json()
            assert body["code"] == "validation_error" and body["detail"].startswith("password: ")
            assert body["errors"][0]["loc"] == ["body", "password"]


async def test_login_with_password_over_72_bytes_is_422_not_500(redis_url: str) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        await register(c, "bob", "a" * 72)
        r = await c.post("/login", json={"username": "bob", "password": "a" * 73})
        assert r.status_code == 422 and r.json()["code"] == "validation_error"


@pytest.mark.parametrize("username,ok", [
    ("abc", True), ("a" * 32, True), ("a.b-c_D9", True),
    ("ab", False), ("a" * 33, False), ("a b", False), ("caf\u00e9", False), ("a/b", False), ("", False),
    ("abc\n", False), ("a:b", False),
])
async def test_username_rules(redis_url: str, username: str, ok: bool) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        r = await register(c, username)
        assert r.status_code == (201 if ok else 422), r.text
        if not ok:
            assert r.json()["detail"].startswith("username: ")


@pytest.mark.parametrize("body", [
    {"username": 123, "password": "password1"}, {"username": "alice"}, {"password": "password1"},
    {"username": "alice", "password": "password1", "admin": True}, [], "alice", None,
    {"username": ["alice"], "password": "password1"}, {"username": "alice", "password": 12345678},
])
async def test_register_bad_bodies(redis_url: str, body: object) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/register", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "validation_error"


async def test_unknown_user_and_wrong_password_look_the_same(redis_url: str) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        await register(c)
        wrong = await c.post("/login", json={"username": "alice", "password": "password2"})
        unknown = await c.post("/login", json={"username": "mallory", "password": "password2"})
        odd = await c.post("/login", json={"username": "??", "password": "password2"})
    for r in (wrong, unknown, odd):
        assert r.status_code == 401
        assert r.json() == {"detail": "invalid username or password", "code": "invalid_credentials"}
        assert r.headers["www-authenticate"] == "Bearer"


async def test_unknown_user_still_pays_for_a_hash(redis_url: str) -> None:
    """Unknown users are checked against a dummy hash of the same cost (functional check, no timing)."""
    settings = make_settings(redis_url)
    app = create_app(settings)
    async with run_gateway(redis_url, app=app) as base, httpx.AsyncClient(base_url=base) as c:
        hasher = app.state.hasher
        calls: list[bytes | None] = []
        real = hasher.verify

        async def spy(password: str, hashed: bytes | None) -> bool:
            calls.append(hashed)
            return await real(password, hashed)

        hasher.verify = spy
        assert (await c.post("/login", json={"username": "ghost", "password": "password1"})).status_code == 401
        assert calls == [None]
        assert hasher._dummy.startswith(b"$2b$04$")


async def test_failed_logins_rate_limited_per_username(redis_url: str, aredis: aioredis.Redis) -> None:
    env = {"SR_AUTH__LOGIN_FAILURES_PER_USER": "3", "SR_AUTH__LOGIN_FAILURE_WINDOW_S": "120"}
    async with run_gateway(redis_url, **env) as base, httpx.AsyncClient(base_url=base) as c:
        await register(c)
        assert (await c.post("/login", json={"username": "alice", "password": "password1"})).status_code == 200
        for _ in range(3):
            assert (await c.post("/login", json={"username": "alice", "password": "nope-nope"})).status_code == 401
        r = await c.post("/login", json={"username": "alice", "password": "password1"})  # even the right one
        assert r.status_code == 429, r.text
        assert r.json()["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 120
        # other usernames are not affected
        await register(c, "carol")
        assert (await c.post("/login", json={"username": "carol", "password": "password1"})).status_code == 200
        # unknown usernames are limited exactly like known ones
        for _ in range(3):
            assert (await c.post("/login", json={"username": "ghost", "password": "nope-nope"})).status_code == 401
        assert (await c.post("/login", json={"username": "ghost", "password": "nope-nope"})).status_code == 429
        # the counter expires with the window
        assert 0 < await aredis.ttl(names.login_fail_user_key("alice")) <= 120
        await aredis.delete(names.login_fail_user_key("alice"))
        assert (await c.post("/login", json={"username": "alice", "password": "password1"})).status_code == 200


async def test_a_success_resets_the_username_counter(redis_url: str) -> None:
    env = {"SR_AUTH__LOGIN_FAILURES_PER_USER": "3"}
    async with run_gateway(redis_url, **env) as base, httpx.AsyncClient(base_url=base) as c:
        await register(c)
        for _ in range(3):
            for _ in range(2):
                assert (await c.post("/login", json={"username": "alice", "password": "nope-nope"})).status_code == 401
            assert (await c.post("/login", json={"username": "alice", "password": "password1"})).status_code == 200


async def test_failed_logins_rate_limited_per_ip(redis_url: str) -> None:
    env = {"SR_AUTH__LOGIN_FAILURES_PER_IP": "4"}
    async with run_gateway(redis_url, **env) as base, httpx.AsyncClient(base_url=base) as c:
        await register(c)
        for i in range(4):
            r = await c.post("/login", json={"username": f"user{i}", "password": "nope-nope"})
            assert r.status_code == 401
        r = await c.post("/login", json={"username": "alice", "password": "password1"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


async def test_concurrent_guesses_cannot_pass_the_limit(redis_url: str) -> None:
    env = {"SR_AUTH__LOGIN_FAILURES_PER_USER": "5"}
    async with run_gateway(redis_url, **env) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        await register(c)
        rs = await asyncio.gather(*(c.post("/login", json={"username": "alice", "password": f"guess-{i}"})
                                    for i in range(30)))
    codes = [r.status_code for r in rs]
    assert codes.count(401) == 5 and codes.count(429) == 25, codes


async def test_oauth2_password_form(redis_url: str) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        await register(c)
        # what Swagger's Authorize button sends
        r = await c.post("/login", data={"grant_type": "password", "username": "alice", "password": "password1",
                                         "scope": "", "client_id": "", "client_secret": ""})
        assert r.status_code == 200, r.text
        assert (await c.get("/me", headers=bearer(r.json()["access_token"]))).status_code == 200
        r = await c.post("/login", data={"username": "alice", "password": "password1"})
        assert r.status_code == 200
        r = await c.post("/login", files={"username": (None, "alice"), "password": (None, "password1")})
        assert r.status_code == 200, r.text  # multipart/form-data
        r = await c.post("/login", data={"username": "alice", "password": "wrong-one"})
        assert r.status_code == 401 and r.json()["code"] == "invalid_credentials"
        r = await c.post("/login", data={"grant_type": "client_credentials", "username": "alice",
                                         "password": "password1"})
        assert r.status_code == 422 and r.json()["detail"].startswith("grant_type: ")
        r = await c.post("/login", data={"username": "alice", "password": "password1", "evil": "1"})
        assert r.status_code == 422 and "unknown field" in r.json()["detail"]
        r = await c.post("/login", content=b"username=alice&username=bob&password=password1",
                         headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 422
        r = await c.post("/login", files={"username": ("u.txt", b"alice"), "password": (None, "password1")})
        assert r.status_code == 422
        r = await c.post("/login", data={"username": "alice"})
        assert r.status_code == 422 and r.json()["detail"] == "password: field required"
        r = await c.post("/login", content=b"alice:password1", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
        r = await c.post("/login")
        assert r.status_code == 415
        r = await c.post("/login", content=b"", headers={"content-type": "application/json"})
        assert r.status_code == 422
        # JSON login refuses unknown fields
        r = await c.post("/login", json={"username": "alice", "password": "password1", "grant_type": "password"})
        assert r.status_code == 422


def _b64(o: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_bad_tokens_are_401(redis_url: str) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        uid = (await register(c)).json()["user"]["id"]
        now = int(time.time())
        bad = {
            "expired": tokens.issue(uid, SECRET, 60, now=now - 3600),
            "forged": tokens.issue(uid, "another-secret-" + "y" * 32, 60),
            "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': uid, 'iat': now, 'exp': now + 60})}.",
            "HS512": jwt.encode({"sub": uid, "iat": now, "exp": now + 60}, SECRET, algorithm="HS512"),
            "no exp": jwt.encode({"sub": uid, "iat": now}, SECRET, algorithm="HS256"),
            "no sub": jwt.encode({"iat": now, "exp": now + 60}, SECRET, algorithm="HS256"),
            "malformed": "not.a.token",
            "garbage": "\u00e9\u00e9\u00e9",
            "huge": "a" * 5000,
            "unknown user": tokens.issue("0" * 32, SECRET, 60),
        }
        for name, token in bad.items():
            headers = {"Authorization": f"Bearer {token}".encode()} if name == "garbage" else bearer(token)
            r = await c.get("/me", headers=headers)
            assert r.status_code == 401, (name, r.text)
            assert r.json()["code"] in ("invalid_token", "not_authenticated"), name
            assert r.headers["www-authenticate"] == "Bearer"
        for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer"}):
            r = await c.get("/me", headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "not_authenticated"
        assert (await c.get("/me", headers=bearer(tokens.issue(uid, SECRET, 60)))).status_code == 200


async def test_busy_hasher_refuses_beyond_the_queue() -> None:
    # Deterministic: every call is started in the same loop turn, so one runs, one waits, the rest are refused.
    from gateway.services.accounts import PasswordHasher
    from shared.errors import DomainError

    hasher = PasswordHasher(rounds=4, max_concurrent=1, max_waiting=1)
    await hasher.start()
    rs = await asyncio.gather(*(hasher.hash(f"password{i}") for i in range(8)), return_exceptions=True)
    busy = [r for r in rs if isinstance(r, DomainError)]
    assert len(busy) == 6 and all(isinstance(r, bytes) for r in rs if r not in busy)
    assert busy[0].code == "busy" and busy[0].retry_after_s == 1


def test_short_secret_refused(redis_url: str) -> None:
    # An empty secret is allowed: the gateway then keeps one in Redis (tests/test_ops.py).
    for secret in ("short", "x" * 31):
        with pytest.raises(GatewayConfigError, match="at least 32 bytes|shorter than 32 bytes"):
            create_app(make_settings(redis_url, JWT_SECRET="", SR_AUTH__JWT_SECRET=secret))


def test_gateway_process_refuses_to_start_with_a_short_secret(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "SR_AUTH__JWT_SECRET")}
    env.update({"REDIS_URL": redis_url, "JWT_SECRET": "too-short", "PORT": "1"})
    p = subprocess.run([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2
    assert "JWT secret shorter than 32 bytes" in p.stderr
    assert "Traceback" not in p.stderr
