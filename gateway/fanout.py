"""Fan-out machinery: one Redis subscription per channel per process, and a bounded queue per client.

``RedisHub`` holds one pub/sub connection for the whole process. Channels are reference-counted: the
first ``acquire`` subscribes, the last ``release`` unsubscribes. One reader task hands every message to a
single ``dispatch`` callable, which must not block (it only appends to client queues); the naive variant
used by the benchmark passes a coroutine function instead, and the reader then awaits it.

``ClientQueue`` is what the reader appends to. Three classes of frames:

- conflated (best touch, klines, EWMA): a newer frame with the same key replaces a pending one in place;
- strict (trades): kept in order; too many pending closes the client (4008, "slow consumer");
- critical (replies, snapshots, a user's own order events): never dropped; past the hard cap the client
  is closed (4009) rather than losing one silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.redis_conn import connect

log = logging.getLogger(__name__)

Dispatch = Callable[[str, bytes], Awaitable[None] | None]

CLOSE_SLOW = 4008
CLOSE_CRITICAL_OVERFLOW = 4009


class RedisHub:
    def __init__(self, redis_url: str, dispatch: Dispatch) -> None:
        self._url = redis_url
        self._dispatch = dispatch
        self._refs: dict[str, int] = {}
        self._subscribed: set[str] = set()
        self._lock = asyncio.Lock()
        self._has_channels = asyncio.Event()
        self._redis: aioredis.Redis | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self.messages = 0

    @property
    def channels(self) -> dict[str, int]:
        return dict(self._refs)

    async def start(self) -> None:
        self._redis = connect(self._url)
        self._pubsub = self._redis.pubsub()
        self._task = asyncio.create_task(self._reader(), name="redis-hub-reader")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._pubsub:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._redis:
            await self._redis.aclose()

    async def acquire(self, channel: str) -> bool:
        """Count one more user of ``channel``; True when this call subscribed it."""
        n = self._refs.get(channel, 0) + 1
        self._refs[channel] = n
        if n == 1:
            await self._sync(channel)
        return n == 1

    async def release(self, channel: str) -> bool:
        """One user fewer; True when this call unsubscribed the channel."""
        n = self._refs.get(channel, 0) - 1
        if n > 0:
            self._refs[channel] = n
            return False
        self._refs.pop(channel, None)
        await self._sync(channel)
        return True

    async def _sync(self, channel: str) -> None:
        # Re-check under the lock: an acquire and a release of one channel may race.
        async with self._lock:
            assert self._pubsub is not None
            wanted = channel in self._refs
            try:
                if wanted and channel not in self._subscribed:
                    await self._pubsub.subscribe(channel)
                    self._subscribed.add(channel)
                elif not wanted and channel in self._subscribed:
                    self._subscribed.discard(channel)
                    await self._pubsub.unsubscribe(channel)
            except (RedisError, OSError) as e:  # the reader reconnects and resubscribes what is wanted
                log.warning("redis (un)subscribe %s failed: %r", channel, e)
            if self._subscribed:
                self._has_channels.set()
            else:
                self._has_channels.clear()

    async def _reader(self) -> None:
        backoff = 0.2
        while True:
            try:
                # redis-py does not read a pub/sub connection that has no channel: wait for the first one.
                await self._has_channels.wait()
                assert self._pubsub is not None
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                backoff = 0.2
                if msg is None or msg.get("type") != "message":
                    continue
                self.messages += 1
                ch = msg["channel"]
                res = self._dispatch(ch.decode() if isinstance(ch, bytes) else ch, msg["data"])
                if res is not None and inspect.isawaitable(res):
                    await res
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:
                log.warning("redis pub/sub connection lost (%r); reconnecting in %.1fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                await self._reconnect()
            except Exception:  # a bad message must never kill the reader
                log.exception("fan-out dispatch failed")

    async def _reconnect(self) -> None:
        async with self._lock:
            old = self._pubsub
            assert self._redis is not None
            self._pubsub = self._redis.pubsub()
            self._subscribed.clear()
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.aclose()
            try:
                if self._refs:
                    await self._pubsub.subscribe(*self._refs)
                    self._subscribed.update(self._refs)
            except (RedisError, OSError) as e:
                log.warning("resubscribe failed: %r", e)


class _Entry:
    __slots__ = ("frame", "kind", "key")

    def __init__(self, frame: str, kind: int, key: str | None) -> None:
        self.frame = frame
        self.kind = kind
        self.key = key


_CONFLATED, _STRICT, _CRITICAL = 0, 1, 2


class ClientQueue:
    """The outgoing frames of one client; appends never block, the connection's writer drains it."""

    def __init__(self, max_strict: int, max_total: int) -> None:
        self.max_strict = max_strict
        self.max_total = max_total
        self._q: deque[_Entry] = deque()
        self._slots: dict[str, _Entry] = {}
        self._strict = 0
        self._ready = asyncio.Event()
        self.failed: tuple[int, str] | None = None
        self.failed_event = asyncio.Event()
        self.conflated = 0
        self.dropped = 0  # frames discarded when the queue failed
        self.direct: Callable[[str], Awaitable[None]] | None = None  # unqueued send (naive variant only)

    def __len__(self) -> int:
        return len(self._q)

    def _push(self, e: _Entry) -> None:
        if len(self._q) >= self.max_total:
            code = CLOSE_CRITICAL_OVERFLOW if e.kind == _CRITICAL else CLOSE_SLOW
            self._fail(code, f"client too slow: {len(self._q)} messages pending")
            return
        self._q.append(e)
        self._ready.set()

    def _fail(self, code: int, reason: str) -> None:
        if self.failed is None:
            self.failed = (code, reason)
            self.failed_event.set()
        self.dropped += len(self._q)
        self._q.clear()
        self._slots.clear()
        self._strict = 0
        self._ready.set()

    def put_conflated(self, key: str, frame: str) -> None:
        if self.failed:
            return
        slot = self._slots.get(key)
        if slot is not None:
            slot.frame = frame
            self.conflated += 1
            return
        e = _Entry(frame, _CONFLATED, key)
        self._slots[key] = e
        self._push(e)

    def put_strict(self, frame: str) -> None:
        if self.failed:
            return
        if self._strict >= self.max_strict:
            self._fail(CLOSE_SLOW, f"client too slow: more than {self.max_strict} trades pending")
            return
        self._strict += 1
        self._push(_Entry(frame, _STRICT, None))

    def put_critical(self, frame: str) -> None:
        if self.failed:
            return
        self._push(_Entry(frame, _CRITICAL, None))

    def close(self, code: int, reason: str) -> None:
        self._fail(code, reason)

    async def get(self) -> str | None:
        """The next frame, or None once the queue has failed (the connection must then close)."""
        while not self._q:
            if self.failed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.failed:
            return None
        e = self._q.popleft()
        if e.kind == _STRICT:
            self._strict -= 1
        elif e.kind == _CONFLATED:
            del self._slots[e.key]  # type: ignore[arg-type]
        return e.frame
