"""Accounts: users in Redis, bcrypt off the event loop, and the failed-login limiter.

Keys are built by ``shared.names`` (section "users"). A user is created in two steps so that no reader
ever sees half a user: the record ``user:{<id>}`` is written first (nothing points to it yet), then the
name is claimed with ``SET user:byname:<name> <id> NX``. Of any number of racing registrations exactly
one claim succeeds; the losers delete their unreferenced record and answer 409. A crash between the two
steps leaves only an unreachable record, never a name without a user.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import bcrypt
import redis.asyncio as aioredis

from gateway import metrics
from shared import names
from shared.errors import DomainError

T = TypeVar("T")
DUMMY_PASSWORD = b"not-a-password: only keeps unknown users as slow as known ones"


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


class _Slots:
    """``n`` slots; waiters of priority 0 are served before any of priority 1, each priority in arrival order."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    async def acquire(self, priority: int) -> None:
        if self.free > 0 and not any(self._waiting):
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[priority].append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # handed a slot, then cancelled: pass it on
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiting[priority].remove(fut)
            raise

    def release(self) -> None:
        for queue in self._waiting:
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)
                    return
        self.free += 1


class PasswordHasher:
    """bcrypt in worker threads, at most ``max_concurrent`` at once, so the event loop never waits on it.

    ``verify(password, None)`` checks against a dummy hash of the same cost, so an unknown user costs as
    much time as a wrong password. Beyond ``max_waiting`` queued hashes, callers get 503 at once, with a
    ``Retry-After`` from the time the queue takes to drain. New passwords (registration, password change) may
    fill only half the queue and wait behind every queued login, so a registration flood does not hold logins up.
    """

    def __init__(self, rounds: int, max_concurrent: int, max_waiting: int) -> None:
        self.rounds = rounds
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self._limiter: anyio.CapacityLimiter | None = None
        self._slots = _Slots(max_concurrent)
        self._dummy = b""
        self._inflight = 0  # running + queued; counted here because the limiter only sees tasks once they queue
        self.hash_s = 0.0  # running mean of one hash's wall time
        self.refused = 0

    async def start(self) -> None:
        self._limiter = anyio.CapacityLimiter(self.max_concurrent)
        self._dummy = await self._run(bcrypt.hashpw, DUMMY_PASSWORD, bcrypt.gensalt(self.rounds))

    def retry_after_s(self) -> int:
        """Whole seconds for the queue as it is to drain (at least 1)."""
        return max(1, math.ceil(self._inflight * self.hash_s / self.max_concurrent))

    async def _run(self, fn: Callable[..., T], *args: Any, new_password: bool = False) -> T:
        assert self._limiter is not None, "PasswordHasher.start() not awaited"
        share = 0.5 if new_password else 1.0
        if self._inflight >= self.max_concurrent + math.ceil(self.max_waiting * share):
            self.refused += 1
            metrics.AUTH_REFUSALS.labels("hashing_queue_full").inc()
            raise DomainError("busy", "too many logins in progress; retry shortly",
                              retry_after_s=self.retry_after_s())
        self._inflight += 1
        try:
            await self._slots.acquire(1 if new_password else 0)
            try:
                out, took = await anyio.to_thread.run_sync(_timed, fn, *args, limiter=self._limiter)
            finally:
                self._slots.release()
            self.hash_s = took if not self.hash_s else 0.8 * self.hash_s + 0.2 * took
            return out
        finally:
            self._inflight -= 1

    async def hash(self, password: str) -> bytes:
        return await self._run(bcrypt.hashpw, password.encode(), bcrypt.gensalt(self.rounds), new_password=True)

    async def verify(self, password: str, hashed: bytes | None) -> bool:
        pw = password.encode()
        if len(pw) > 72:  # bcrypt refuses these; registration never accepts them, so they match nothing
            pw, hashed = DUMMY_PASSWORD, None
        ok = await self._run(bcrypt.checkpw, pw, hashed or self._dummy)
        return ok and hashed is not None


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    created_us: int
    pw_hash: bytes
    token_gen: int = 0


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _user(raw: Mapping[bytes | str, bytes | str]) -> User | None:
    """A user hash as redis-py returns it (bytes: the client does not decode)."""
    if not raw or b"id" not in raw:
        return None
    pw_hash = raw[b"pw_hash"]
    return User(id=_text(raw[b"id"]), username=_text(raw[b"username"]), created_us=int(raw[b"created_us"]),
                pw_hash=pw_hash if isinstance(pw_hash, bytes) else pw_hash.encode(),
                token_gen=int(raw.get(b"token_gen", 0)))


class UserStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def name_taken(self, username: str) -> bool:
        return bool(await self.redis.exists(names.username_key(username)))

    async def create(self, username: str, pw_hash: bytes) -> User | None:
        """The new user, or ``None`` when the name (case-insensitively) is already taken."""
        user = User(id=uuid.uuid4().hex, username=username, created_us=time.time_ns() // 1000, pw_hash=pw_hash)
        key = names.user_key(user.id)
        await self.redis.hset(key, mapping={"id": user.id, "username": user.username,
                                            "created_us": user.created_us, "pw_hash": user.pw_hash})
        if await self.redis.set(names.username_key(username), user.id, nx=True):
            return user
        await self.redis.delete(key)
        return None

    async def get(self, user_id: str) -> User | None:
        return _user(await self.redis.hgetall(names.user_key(user_id)))

    async def by_name(self, username: str) -> User | None:
        uid = await self.redis.get(names.username_key(username))
        return await self.get(_text(uid)) if uid else None


# INCR with the window's expiry set by the first failure (fixed window; later attempts do not extend it).
_COUNT = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""
# Give an attempt back, never creating a key (a DECR on an expired key would leave -1 with no expiry).
_REFUND = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return 0
"""


class LoginLimiter:
    """Failed logins per username and per client IP, counted in Redis with the window as expiry.

    Every attempt is counted *before* the password is checked, and given back on success, so a burst of
    concurrent guesses cannot slip past the limit. Past the limit: 429 with ``Retry-After`` until the
    window (which starts at the first failure) expires. Unknown usernames are counted like known ones.
    """

    def __init__(self, redis: aioredis.Redis, per_user: int, per_ip: int, window_s: int) -> None:
        self.redis = redis
        self.per_user = per_user
        self.per_ip = per_ip
        self.window_s = window_s
        self._count = redis.register_script(_COUNT)
        self._refund = redis.register_script(_REFUND)

    async def attempt(self, username: str, ip: str) -> None:
        ukey, ikey = names.login_fail_user_key(username), names.login_fail_ip_key(ip)
        n_user, ttl_user = await self._count(keys=[ukey], args=[self.window_s])
        n_ip, ttl_ip = await self._count(keys=[ikey], args=[self.window_s])
        waits = []
        if int(n_user) > self.per_user:
            waits.append(int(ttl_user))
        if int(n_ip) > self.per_ip:
            waits.append(int(ttl_ip))
        if waits:
            wait = max(1, max(waits))
            raise DomainError("rate_limited", f"too many failed logins; retry in {wait} s", retry_after_s=wait)

    async def refund(self, username: str, ip: str) -> None:
        """An attempt that was never checked (the hashing queue was full) is given back."""
        await self._refund(keys=[names.login_fail_user_key(username)])
        await self._refund(keys=[names.login_fail_ip_key(ip)])

    async def checked(self, username: str, ip: str, hasher: PasswordHasher, password: str,
                      hashed: bytes | None) -> bool:
        """``hasher.verify`` of an attempt already counted, given back if the hasher refused it (503)."""
        try:
            return await hasher.verify(password, hashed)
        except DomainError:
            await self.refund(username, ip)
            raise

    async def succeeded(self, username: str, ip: str) -> None:
        await self.redis.delete(names.login_fail_user_key(username))
        await self._refund(keys=[names.login_fail_ip_key(ip)])


class RegistrationLimiter:
    """Registrations per client address and in all, each counted in Redis in a fixed window started by its first
    registration; past either limit, 429 with ``Retry-After`` (the window's time left). Counted before the
    password is hashed: a refused registration costs one script call, no hash."""

    def __init__(self, redis: aioredis.Redis, per_ip: int, ip_window_s: int, total: int, total_window_s: int) -> None:
        self.per_ip, self.ip_window_s = per_ip, ip_window_s
        self.total, self.total_window_s = total, total_window_s
        self._count = redis.register_script(_COUNT)
        self.refused = 0

    async def attempt(self, ip: str) -> None:
        n, ttl = await self._count(keys=[names.register_ip_key(ip)], args=[self.ip_window_s])
        if int(n) > self.per_ip:
            self._refuse("from this address", int(ttl))
        n, ttl = await self._count(keys=[names.REGISTER_ALL_KEY], args=[self.total_window_s])
        if int(n) > self.total:
            self._refuse("on this server", int(ttl))

    def _refuse(self, where: str, ttl: int) -> None:
        self.refused += 1
        metrics.AUTH_REFUSALS.labels("registration_limit").inc()
        wait = max(1, ttl)
        raise DomainError("rate_limited", f"too many registrations {where}; retry in {wait} s", retry_after_s=wait)
