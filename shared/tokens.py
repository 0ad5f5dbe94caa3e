"""JWT access tokens: HS256 pinned, ``exp``/``iat``/``sub`` required. Used by the gateway's REST and WebSocket."""

from __future__ import annotations

import time

import jwt

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32


class TokenError(ValueError):
    pass


def check_secret(secret: str) -> None:
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise TokenError(f"JWT secret must be at least {MIN_SECRET_BYTES} bytes")


def issue(user_id: str, secret: str, ttl_s: int, *, now: float | None = None, username: str | None = None) -> str:
    check_secret(secret)
    iat = int(now if now is not None else time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": iat, "exp": iat + ttl_s}
    if username is not None:
        claims["name"] = username
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(token: str, secret: str) -> str:
    """The token's subject (user id); ``TokenError`` for anything expired, forged, unsigned or malformed."""
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise TokenError("malformed token")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "iat", "sub"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.PyJWTError as e:
        raise TokenError(f"invalid token: {e}") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenError("invalid token: bad subject")
    return sub
