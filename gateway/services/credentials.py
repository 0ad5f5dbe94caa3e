"""Who is calling: access tokens (JWT) and API keys, checked against each user's revocation state.

A user's state is three things in Redis, all in the user's slot (``shared.names``, section "users"): the token
generation (field ``token_gen`` of ``user:{u:<id>}``, raised by a password change: older tokens stop working), the
logged-out token ids (``auth:revoked:{u:<id>}``, each with its token's expiry, the key expiring with the last) and
the API keys (``apikeys:{u:<id>}``). Each gateway keeps a copy per user (``UserAuth``), read in one round trip the
first time the user is seen, so a request with a known token costs no Redis round trip: a signature is verified
once per token (``shared.tokens.VerifiedTokens``, until the token expires) and the revocation check reads the copy.

Every change is written first, then announced on ``auth:revocations`` (the user id) through the gateway's
``RedisHub``; every gateway drops its copy of that user at once and checks that user's open WebSockets again,
closing those whose credential is gone (``Watcher.revoked``). A copy read while a change was being announced is
used for that one request but not kept. A copy is kept at most ``[auth] state_cache_s``; after a lost pub/sub
connection every copy is dropped and every open WebSocket is checked again.

API keys look like ``srk_<user id>_<key id>_<secret>``: the user id routes the lookup to the user's state, the
secret (32 random bytes) is stored only as its SHA-256 (right for a random secret: nothing to brute-force) and
compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import Coroutine, Iterable
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway import metrics
from gateway.services.principals import (
    KEY_PREFIX,
    SCOPES,
    ApiKey,
    Principal,
    UserAuth,
    Watcher,
    digest,
    effective_scopes,
    new_key,
    parse_key,
    why_revoked,
)
from shared import names, tokens
from shared.errors import DomainError
from shared.pubsub import RedisHub
from shared.redis_conn import Client
from shared.settings import Settings
from shared.timeutil import now_us

log = logging.getLogger(__name__)

MAX_USERS_CACHED = 100_000
TOUCH_EVERY_S = 60.0  # an API key's ``last_used_us`` is written at most this often per gateway


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _retrieved(t: asyncio.Future[UserAuth]) -> None:
    """A shared read whose every waiter went away still has its error looked at (no 'never retrieved' noise)."""
    if not t.cancelled():
        t.exception()


# A logged-out token: its id with its expiry; expired ids pruned; the key lives as long as the last one.
_REVOKE = """
local now = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local last = 0
for i = 1, #all, 2 do
  local e = tonumber(all[i + 1])
  if e == nil or e <= now then redis.call('HDEL', KEYS[1], all[i]) elseif e > last then last = e end
end
if last > now then redis.call('EXPIRE', KEYS[1], math.ceil(last - now) + 1) end
return 1
"""
# A new password and the next token generation, only for a user that exists.
_NEW_PASSWORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'pw_hash', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'token_gen', 1)
"""
_ADD_KEY = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
_DELETE_KEY = """
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
"""
_TOUCH_KEY = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 1
"""


class Credentials:
    """Authentication and revocation for one gateway process (the module's docstring)."""

    def __init__(self, redis: Client, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.secret = settings.auth.jwt_secret
        self.hub = RedisHub(settings.redis.url, settings.redis.cluster, self._on_message,
                            on_resubscribed=self._on_resubscribed)
        self._tokens = tokens.VerifiedTokens()
        self._states: dict[str, UserAuth] = {}
        self._loading: dict[str, asyncio.Future[UserAuth]] = {}
        self._version = 0  # bumped by every announcement: a read that overlapped one is not kept
        self._watchers: dict[str, set[Watcher]] = {}
        self._touched: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._revoke = redis.register_script(_REVOKE)
        self._new_password = redis.register_script(_NEW_PASSWORD)
        self._add_key = redis.register_script(_ADD_KEY)
        self._delete_key = redis.register_script(_DELETE_KEY)
        self._touch_key = redis.register_script(_TOUCH_KEY)
        self.announcements = 0

    async def start(self) -> None:
        await self.hub.start()
        await self.hub.acquire(names.REVOCATIONS_CHANNEL)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        await self.hub.stop()

    # -- authentication ----------------------------------------------------------------------------

    async def authenticate(self, token: object) -> Principal:
        """The caller behind a bearer token or an API key; ``DomainError`` 401 otherwise."""
        if token is None or token == "":
            raise DomainError("not_authenticated", "not authenticated: send Authorization: Bearer <token>")
        if isinstance(token, str) and token.startswith(KEY_PREFIX):
            return await self._key(token)
        try:
            if not isinstance(token, str):
                raise tokens.TokenError("malformed token")
            c = self._tokens.claims(token, self.secret)
        except tokens.TokenError as e:
            raise DomainError("invalid_token", str(e)) from None
        p = Principal(user_id=c.sub, kind="token", cred_id=c.rid, scopes=frozenset(SCOPES), gen=c.gen, exp=c.exp)
        why = why_revoked(p, await self.state(c.sub), now_us())
        if why is not None:
            raise DomainError("invalid_token", why)
        return p

    async def _key(self, key: str) -> Principal:
        parsed = parse_key(key)
        if parsed is None:
            raise DomainError("invalid_token", "malformed API key")
        user_id, kid, secret = parsed
        state = await self.state(user_id)
        if kid not in state.keys:  # maybe made on another gateway a moment ago: read again once
            state = await self.state(user_id, fresh=True)
        found = state.keys.get(kid)
        if found is None or not hmac.compare_digest(found.digest, digest(secret)):
            raise DomainError("invalid_token", "unknown or deleted API key")
        p = Principal(user_id=user_id, kind="key", cred_id=kid, scopes=effective_scopes(found.scopes),
                      exp=0.0 if found.expires_us is None else found.expires_us / 1e6)
        why = why_revoked(p, state, now_us())
        if why is not None:
            raise DomainError("invalid_token", why)
        mono = time.monotonic()
        if mono - self._touched.get(kid, -TOUCH_EVERY_S) >= TOUCH_EVERY_S:
            self._touched[kid] = mono
            if len(self._touched) > MAX_USERS_CACHED:
                del self._touched[next(iter(self._touched))]
            await self._touch_key(keys=[names.api_keys_key(user_id), names.api_keys_used_key(user_id)],
                                  args=[kid, now_us()])
        return p

    async def state(self, user_id: str, *, fresh: bool = False) -> UserAuth:
        """``user_id``'s revocation state: the kept copy, or read (one round trip, shared by the requests that
        need it meanwhile) and kept."""
        held = self._states.get(user_id)
        if held is not None and not fresh and time.monotonic() < held.until:
            return held
        task = None if fresh else self._loading.get(user_id)
        if task is None:
            task = asyncio.ensure_future(self._load(user_id))
            task.add_done_callback(_retrieved)
            if not fresh:
                self._loading[user_id] = task
                task.add_done_callback(lambda t: self._loading.pop(user_id, None) if self._loading.get(user_id) is t
                                       else None)
        return await asyncio.shield(task)

    async def _load(self, user_id: str) -> UserAuth:
        version = self._version
        state = await self._read(user_id)
        if self._version == version:  # no announcement meanwhile: it may be kept
            self._states.pop(user_id, None)
            if len(self._states) >= MAX_USERS_CACHED:
                del self._states[next(iter(self._states))]
            self._states[user_id] = state
        return state

    async def _read(self, user_id: str) -> UserAuth:
        try:
            ukey = names.user_key(user_id)
        except ValueError:
            raise DomainError("invalid_token", "invalid token: bad subject") from None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(ukey, "token_gen")
            pipe.hgetall(names.revoked_tokens_key(user_id))
            pipe.hgetall(names.api_keys_key(user_id))
            gen, revoked, raw_keys = await pipe.execute()
        keys: dict[str, ApiKey] = {}
        for kid, raw in raw_keys.items():
            try:
                keys[_text(kid)] = ApiKey.from_json(raw)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("unreadable API key record %r of user %s", kid, user_id)
        return UserAuth(gen=int(gen or 0), revoked=frozenset(_text(k) for k in revoked), keys=keys,
                        until=time.monotonic() + self.settings.auth.state_cache_s)

    # -- changes -----------------------------------------------------------------------------------

    async def announce(self, user_id: str, kind: str) -> None:
        """Every gateway (this one included, at once) forgets what it kept of ``user_id``."""
        self._forget(user_id)
        self.announcements += 1
        metrics.REVOCATIONS.labels(kind).inc()
        await self.redis.execute_command("SPUBLISH" if self.settings.redis.cluster else "PUBLISH",
                                         names.REVOCATIONS_CHANNEL, user_id)

    async def logout(self, p: Principal) -> None:
        """``p``'s token revoked until it expires."""
        await self._revoke(keys=[names.revoked_tokens_key(p.user_id)],
                           args=[p.cred_id, math.ceil(p.exp), int(time.time())])
        await self.announce(p.user_id, "logout")

    async def set_password(self, user_id: str, pw_hash: bytes) -> int:
        """The new hash stored and the user's token generation raised (every older token revoked): the new one."""
        gen = int(await self._new_password(keys=[names.user_key(user_id)], args=[pw_hash]))
        if gen < 0:
            raise DomainError("invalid_token", "the token's user no longer exists")
        await self.announce(user_id, "password")
        return gen

    async def add_key(self, user_id: str, name: str, scopes: Iterable[str],
                      expires_in_s: int | None) -> tuple[ApiKey, str]:
        kid, secret, whole = new_key(user_id)
        created = now_us()
        key = ApiKey(id=kid, name=name, scopes=tuple(s for s in SCOPES if s in set(scopes)), created_us=created,
                     expires_us=None if expires_in_s is None else created + expires_in_s * 1_000_000,
                     digest=digest(secret))
        limit = self.settings.auth.api_keys_per_user
        if not await self._add_key(keys=[names.api_keys_key(user_id)], args=[kid, key.to_json(), limit]):
            raise DomainError("too_many_keys", f"at most {limit} API keys per user: delete one first")
        await self.announce(user_id, "key_created")
        return key, whole

    async def keys(self, user_id: str) -> list[tuple[ApiKey, int | None]]:
        """The user's keys with their last use (us), oldest first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(names.api_keys_key(user_id))
            pipe.hgetall(names.api_keys_used_key(user_id))
            raw, used = await pipe.execute()
        last = {_text(k): int(v) for k, v in used.items()}
        out = []
        for kid, rec in raw.items():
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                out.append((ApiKey.from_json(rec), last.get(_text(kid))))
        out.sort(key=lambda kv: (kv[0].created_us, kv[0].id))
        return out

    async def delete_key(self, user_id: str, kid: str) -> None:
        gone = await self._delete_key(keys=[names.api_keys_key(user_id), names.api_keys_used_key(user_id)],
                                      args=[kid])
        if not gone:
            raise DomainError("key_not_found", f"no API key {kid[:40]!r}")
        await self.announce(user_id, "key_deleted")

    # -- open connections --------------------------------------------------------------------------

    def watch(self, w: Watcher) -> None:
        if w.principal is not None:
            self._watchers.setdefault(w.principal.user_id, set()).add(w)

    def unwatch(self, w: Watcher) -> None:
        if w.principal is None:
            return
        ws = self._watchers.get(w.principal.user_id)
        if ws is not None:
            ws.discard(w)
            if not ws:
                del self._watchers[w.principal.user_id]

    def _forget(self, user_id: str) -> None:
        self._version += 1
        self._states.pop(user_id, None)
        self._loading.pop(user_id, None)  # a read in flight may predate the change: later requests read again

    def _on_message(self, channel: str, data: bytes) -> None:
        user_id = data.decode(errors="replace")
        self._forget(user_id)
        if user_id in self._watchers:
            self._spawn(self._recheck([user_id]))

    def _on_resubscribed(self) -> None:
        self._version += 1
        self._states.clear()
        self._loading.clear()
        if self._watchers:
            self._spawn(self._recheck(list(self._watchers)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recheck(self, users: list[str]) -> None:
        """Close the open connections of ``users`` whose credential is gone (Redis read until it answers)."""
        for user_id in users:
            delay = 0.1
            while user_id in self._watchers:
                try:
                    state = await self.state(user_id, fresh=True)
                    break
                except (RedisError, OSError) as e:
                    log.warning("revocation check of %s: redis unavailable (%r), again in %.1fs", user_id, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 2.0)
            else:
                continue
            now = now_us()
            for w in list(self._watchers.get(user_id, ())):
                if w.principal is not None and (why := why_revoked(w.principal, state, now)) is not None:
                    w.revoked(why)
