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


def verify(token: object, secret: str) -> str:
    """The token's subject (user id); ``TokenError`` for anything expired, forged, unsigned or malformed
    (a client's message may hold anything where a token belongs)."""
    return verify_claims(token, secret)[0]


def verify_claims(token: object, secret: str) -> tuple[str, float]:
    """The token's subject and expiry (epoch seconds); ``TokenError`` as ``verify``."""
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
    return sub, float(claims["exp"])


class VerifiedTokens:
    """Tokens verified in the last ``ttl_s`` seconds, so a client's every request does not pay for the HMAC and
    the JSON decoding again. A hit still honours the token's ``exp``; only successes are kept, keyed by the
    token string and the secret. Bounded: the oldest entries go first."""

    def __init__(self, ttl_s: float = 30.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: dict[tuple[str, str], tuple[str, float]] = {}

    def verify(self, token: str, secret: str, *, now: float | None = None) -> str:
        t = time.time() if now is None else now
        key = (token, secret)
        hit = self._seen.get(key)
        if hit is not None:
            if t < hit[1]:
                return hit[0]
            del self._seen[key]
        sub, exp = verify_claims(token, secret)
        if len(self._seen) >= self.max_entries:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = (sub, min(exp, t + self.ttl_s))
        return sub
