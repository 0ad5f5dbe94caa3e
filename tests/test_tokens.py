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
