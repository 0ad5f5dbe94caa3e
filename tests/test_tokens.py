import base64
import json

import jwt
import pytest

from shared import tokens

SECRET = "s" * 64


def test_roundtrip() -> None:
    assert tokens.verify(tokens.issue("u1", SECRET, 60), SECRET) == "u1"


@pytest.mark.parametrize("make", [
    lambda: tokens.issue("u1", SECRET, 60, now=0),  # expired
    lambda: tokens.issue("u1", "t" * 32, 60),  # forged (other secret)
    lambda: "not.a.token",
    lambda: "",
    lambda: jwt.encode({"sub": "u1", "iat": 1, "exp": 2**40}, SECRET, algorithm="HS512"),  # alg not pinned
    lambda: jwt.encode({"sub": "u1", "exp": 2**40}, SECRET, algorithm="HS256"),  # no iat
])
def test_rejects(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(tokens.TokenError):
        tokens.verify(make(), SECRET)


def test_alg_none_rejected() -> None:
    def b64(o: dict) -> str:  # type: ignore[type-arg]
        return base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()
    tok = b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": "u1", "iat": 1, "exp": 2**40}) + "."
    with pytest.raises(tokens.TokenError):
        tokens.verify(tok, SECRET)


def test_short_secret_refused() -> None:
    with pytest.raises(tokens.TokenError):
        tokens.issue("u1", "short", 60)


@pytest.mark.parametrize("make", test_rejects.pytestmark[0].args[1])  # type: ignore[attr-defined]
def test_cache_rejects_the_same(make) -> None:  # type: ignore[no-untyped-def]
    cache = tokens.VerifiedTokens()
    for _ in range(2):
        with pytest.raises(tokens.TokenError):
            cache.verify(make(), SECRET)


def test_cache_honours_expiry_secret_and_bound() -> None:
    import time
    now = time.time()
    cache = tokens.VerifiedTokens(ttl_s=30, max_entries=2)
    tok = tokens.issue("u1", SECRET, 10, now=now)
    assert cache.verify(tok, SECRET, now=now) == "u1"
    assert cache.verify(tok, SECRET, now=now + 9) == "u1"  # a hit
    old = tokens.issue("u1", SECRET, 10, now=now - 20)  # expired for real; cached as if verified back then
    cache._seen[(old, SECRET)] = ("u1", now - 10)
    with pytest.raises(tokens.TokenError):
        cache.verify(old, SECRET, now=now)  # past its expiry: dropped and verified again
    with pytest.raises(tokens.TokenError):
        cache.verify(tok, "o" * 64, now=now)  # another secret never hits
    for i in range(5):
        assert cache.verify(tokens.issue(f"u{i}", SECRET, 60, now=now), SECRET, now=now) == f"u{i}"
    assert len(cache._seen) <= 2
