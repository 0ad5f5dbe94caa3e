"""Who a request is, without I/O: the authenticated ``Principal``, API key records and their format, a user's
revocation state (``UserAuth``) and the rule that decides whether a credential still holds (``why_revoked``).
``gateway.services.credentials`` reads and writes them in Redis."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import orjson

SCOPES = ("read", "trade")
KEY_PREFIX = "srk_"
_KEY = re.compile(r"srk_([0-9a-f]{32})_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a token (every scope) or an API key (its scopes)."""

    user_id: str
    kind: Literal["token", "key"]
    cred_id: str  # the token's revocation id, or the key id
    scopes: frozenset[str]
    gen: int = 0
    exp: float = 0.0  # a token's expiry, or an API key's (epoch s; 0: none)

    def can(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    created_us: int
    expires_us: int | None
    digest: str  # sha256 of the secret, hex

    def to_json(self) -> bytes:
        return orjson.dumps({"id": self.id, "name": self.name, "scopes": list(self.scopes),
                             "created_us": self.created_us, "expires_us": self.expires_us, "digest": self.digest})

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKey:
        o = orjson.loads(raw)
        return cls(id=str(o["id"]), name=str(o["name"]), scopes=tuple(str(s) for s in o["scopes"]),
                   created_us=int(o["created_us"]),
                   expires_us=None if o.get("expires_us") is None else int(o["expires_us"]), digest=str(o["digest"]))


@dataclass(frozen=True, slots=True)
class UserAuth:
    """One user's revocation state as a gateway last read it."""

    gen: int
    revoked: frozenset[str]
    keys: Mapping[str, ApiKey]
    until: float  # monotonic time after which it is read again


class Watcher(Protocol):
    """An open connection authenticated as ``principal``; ``revoked`` is called when its credential is gone."""

    principal: Principal | None

    def revoked(self, reason: str) -> None: ...


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(user_id: str) -> tuple[str, str, str]:
    """A new key's id, its secret and the whole key (shown once)."""
    kid, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return kid, secret, f"{KEY_PREFIX}{user_id}_{kid}_{secret}"


def parse_key(key: str) -> tuple[str, str, str] | None:
    m = _KEY.fullmatch(key)
    return (m[1], m[2], m[3]) if m else None


def effective_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """``trade`` includes ``read``."""
    s = frozenset(scopes)
    return s | {"read"} if "trade" in s else s


def why_revoked(p: Principal, state: UserAuth, now_us_: int) -> str | None:
    """Why ``p`` no longer authenticates against ``state``, or None."""
    if p.kind == "token":
        if p.gen < state.gen:
            return "token revoked: the password was changed"
        if p.cred_id in state.revoked:
            return "token revoked (logged out)"
        return None
    key = state.keys.get(p.cred_id)
    if key is None:
        return "API key deleted"
    if key.expires_us is not None and key.expires_us <= now_us_:
        return "API key expired"
    return None
