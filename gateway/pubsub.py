"""One Redis pub/sub connection per process, shared by every subscriber in it.

Channels are reference-counted: the first ``acquire`` subscribes, the last ``release`` unsubscribes. One
reader task hands every message to a single ``dispatch`` callable, which must not block (the market-data
streams and the order events only append to client queues or resolve futures). A lost connection is replaced
by a fresh one subscribed to every wanted channel, and ``on_resubscribed`` is called: what was published in
between never arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis

from shared.redis_conn import connect

log = logging.getLogger(__name__)

Dispatch = Callable[[str, bytes], None]


class RedisHub:
    def __init__(self, redis_url: str, dispatch: Dispatch, on_resubscribed: Callable[[], None] | None = None) -> None:
        self._url = redis_url
        self._dispatch = dispatch
        # Called after a lost connection was replaced: messages published in between never arrive.
        self._on_resubscribed = on_resubscribed
        self._refs: dict[str, int] = {}
        self._subscribed: set[str] = set()
        self._lock = asyncio.Lock()
        self._has_channels = asyncio.Event()
        self._redis: aioredis.Redis | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._dirty = False  # the connection may hold fewer channels than wanted: the reader reconnects
        self.messages = 0
        self.reconnect_failures = 0

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
            except Exception as e:  # the reader reconnects and subscribes what is wanted
                # Not only RedisError: the reader shares this connection, and when it loses it first redis-py's
                # half-torn state shows here as AttributeError or RuntimeError.
                log.warning("redis (un)subscribe %s failed: %r", channel, e)
                self._dirty = True
            # The reader follows what is *wanted*: a channel whose subscribe failed must still bring it to
            # reconnect, or that channel would never be subscribed.
            if self._refs:
                self._has_channels.set()
            else:
                self._has_channels.clear()

    async def _reader(self) -> None:
        backoff = 0.2
        while True:
            # redis-py does not read a pub/sub connection that has no channel: wait for the first one.
            await self._has_channels.wait()
            try:
                assert self._pubsub is not None
                # A lost connection or a failed (re)subscribe: a fresh connection with every wanted channel.
                # (get_message on a pub/sub that never subscribed raises RuntimeError at once: a busy loop.)
                if self._dirty or self._pubsub.connection is None:
                    await self._reconnect()
                    if self._on_resubscribed is not None:
                        try:
                            self._on_resubscribed()
                        except Exception:
                            log.exception("on_resubscribed failed")
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # RedisError, OSError, or redis-py's state broken by the loss
                self._dirty = True
                self.reconnect_failures += 1
                log.warning("redis pub/sub connection lost (%r); reconnecting in %.1fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            if msg is None or msg.get("type") != "message":
                continue
            self.messages += 1
            ch = msg["channel"]
            try:
                self._dispatch(ch.decode() if isinstance(ch, bytes) else ch, msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad message must never kill the reader
                log.exception("fan-out dispatch failed")

    async def _reconnect(self) -> None:
        """A new pub/sub connection subscribed to every wanted channel; raises (and stays dirty) on failure."""
        async with self._lock:
            old = self._pubsub
            assert self._redis is not None
            self._pubsub = self._redis.pubsub()
            self._subscribed.clear()
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.aclose()
            if self._refs:
                await self._pubsub.subscribe(*self._refs)
                self._subscribed.update(self._refs)
            self._dirty = False
