"""JWT access tokens: HS256 pinned, ``exp``/``iat``/``sub`` required. Used by the gateway's REST and WebSocket.

A token also carries ``jti`` (random: what ``POST /logout`` revokes) and ``gen`` (the user's token generation when
it was issued: a password change raises it, and every older token stops working). Tokens without them (issued
before they existed) are generation 0 and revoked by a hash of the token itself.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32


class TokenError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    exp: float
    rid: str  # revocation id: the ``jti``, or a hash of the token when it has none
    gen: int


def check_secret(secret: str) -> None:
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise TokenError(f"JWT secret must be at least {MIN_SECRET_BYTES} bytes")


def issue(user_id: str, secret: str, ttl_s: int, *, now: float | None = None, username: str | None = None,
          gen: int | None = None) -> str:
    check_secret(secret)
    iat = int(now if now is not None else time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": iat, "exp": iat + ttl_s, "jti": secrets.token_hex(12)}
    if username is not None:
        claims["name"] = username
    if gen:
        claims["gen"] = gen
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(token: object, secret: str) -> str:
    """The token's subject (user id); ``TokenError`` for anything expired, forged, unsigned or malformed
    (a client's message may hold anything where a token belongs)."""
    return decode(token, secret).sub


def verify_claims(token: object, secret: str) -> tuple[str, float]:
    """The token's subject and expiry (epoch seconds); ``TokenError`` as ``verify``."""
    c = decode(token, secret)
    return c.sub, c.exp


def decode(token: object, secret: str) -> Claims:
    """The claims the gateway uses; ``TokenError`` as ``verify``."""
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise TokenError("malformed token")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "iat", "sub"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.PyJWTError as e:
        raise TokenError(f"invalid token: {e}") from None
    sub, jti, gen = claims.get("sub"), claims.get("jti"), claims.get("gen", 0)
    if not isinstance(sub, str) or not sub:
        raise TokenError("invalid token: bad subject")
    if jti is not None and not (isinstance(jti, str) and 0 < len(jti) <= 64):
        raise TokenError("invalid token: bad jti")
    if not isinstance(gen, int) or isinstance(gen, bool) or not 0 <= gen < 2**53:
        raise TokenError("invalid token: bad gen")
    rid = jti if jti is not None else "h:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return Claims(sub=sub, exp=float(claims["exp"]), rid=rid, gen=gen)


class VerifiedTokens:
    """Tokens whose signature was verified, kept until they expire (``ttl_s``, if given, bounds it further), so a
    client's every request does not pay for the HMAC and the JSON decoding again. Only successes are kept, keyed
    by the token string and the secret. Bounded: the oldest entries go first. Revocation is not this cache's
    business (the gateway's ``Credentials`` checks every hit against the user's state)."""

    def __init__(self, ttl_s: float | None = None, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: dict[tuple[str, str], tuple[Claims, float]] = {}

    def verify(self, token: str, secret: str, *, now: float | None = None) -> str:
        return self.claims(token, secret, now=now).sub

    def claims(self, token: str, secret: str, *, now: float | None = None) -> Claims:
        t = time.time() if now is None else now
        key = (token, secret)
        hit = self._seen.get(key)
        if hit is not None:
            if t < hit[1]:
                return hit[0]
            del self._seen[key]
        c = decode(token, secret)
        if len(self._seen) >= self.max_entries:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = (c, c.exp if self.ttl_s is None else min(c.exp, t + self.ttl_s))
        return c
