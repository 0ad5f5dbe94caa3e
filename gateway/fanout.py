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
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import redis.asyncio as aioredis

from gateway.wsframe import TEXT_FIN, as_frame, payload_of
from shared.redis_conn import connect

log = logging.getLogger(__name__)

Dispatch = Callable[[str, bytes], Awaitable[None] | None]

CLOSE_SLOW = 4008
CLOSE_CRITICAL_OVERFLOW = 4009


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
                res = self._dispatch(ch.decode() if isinstance(ch, bytes) else ch, msg["data"])
                if res is not None and inspect.isawaitable(res):
                    await res
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


class Sink(Protocol):
    """Where a queue writes pre-built frames directly (``gateway.wsserver.FrameSink``)."""

    on_resume: Callable[[], None] | None

    def writable_now(self) -> bool: ...

    def write_frames(self, data: bytes) -> None: ...


class _Slot:
    """The pending frame of one conflated key; replaced in place by a newer one."""

    __slots__ = ("frame",)

    def __init__(self, frame: bytes) -> None:
        self.frame = frame


class _Flusher:
    """Per event loop: one ``call_soon`` flushes every queue that got frames during this loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[ClientQueue] = []
        self.scheduled = False

    def add(self, q: ClientQueue) -> None:
        self.dirty.append(q)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for q in dirty:
            try:
                q._flush()
            except Exception:  # one broken connection must not stop the others' frames
                log.exception("flushing a client queue failed")


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = weakref.WeakKeyDictionary()


class QueueStats:
    """Process-wide totals over every client queue, kept as plain ints on the hot path; the gateway turns them
    into Prometheus counters once a second (``gateway.metrics.report_queue_stats``)."""

    sent = 0
    conflated = 0


class ClientQueue:
    """The outgoing frames of one client; appends never block.

    Frames are WebSocket frames (``gateway.wsframe``), usually built once per topic and shared by every
    subscriber; a ``str`` or JSON ``bytes`` given to a ``put_*`` is framed here. With a sink attached
    (``attach``) the pending frames are written in one ``write_frames`` per event-loop turn, straight
    from one ``call_soon`` per loop turn for all queues: no task, no ASGI message per frame. Without one, ``pump`` is the
    connection's writer task and sends each frame through ASGI ``send_text``.
    """

    def __init__(self, max_strict: int, max_total: int) -> None:
        self.max_strict = max_strict
        self.max_total = max_total
        self._q: deque[bytes | _Slot] = deque()
        self._slots: dict[str, _Slot] = {}
        self._strict = 0
        self._ready = asyncio.Event()
        self._sink: Sink | None = None
        self._flusher: _Flusher | None = None
        self._flush_pending = False
        self._sending = False
        self._stalled = False
        self.failed: tuple[int, str] | None = None
        self.failed_event = asyncio.Event()
        self.conflated = 0
        self.dropped = 0  # frames discarded when the queue failed
        self.direct: Callable[[str], Awaitable[None]] | None = None  # unqueued send (naive variant only)

    def __len__(self) -> int:
        return len(self._q)

    @property
    def idle(self) -> bool:
        """Nothing pending and nothing being sent."""
        return not self._q and not self._sending

    def attach(self, sink: Sink) -> None:
        """Write frames straight to ``sink`` from now on (call from the event loop's thread)."""
        self._sink = sink
        loop = asyncio.get_running_loop()
        self._flusher = _flushers.get(loop) or _flushers.setdefault(loop, _Flusher(loop))
        sink.on_resume = self._resumed
        if self._q:
            self._wake()

    def _wake(self) -> None:
        if self._sink is None:
            self._ready.set()
        elif not self._flush_pending and not self._stalled:
            assert self._flusher is not None
            self._flush_pending = True
            self._flusher.add(self)

    def _take(self) -> list[bytes]:
        frames = [e.frame if type(e) is _Slot else e for e in self._q]  # type: ignore[union-attr]
        self._q.clear()
        self._slots.clear()
        self._strict = 0
        return frames  # type: ignore[return-value]

    def _flush(self) -> None:
        self._flush_pending = False
        sink = self._sink
        if self.failed or not self._q or sink is None:
            return
        if not sink.writable_now():
            self._stalled = True  # the transport calls on_resume once its buffer has drained
            return
        QueueStats.sent += len(self._q)
        if len(self._q) == 1:
            e = self._q.popleft()
            self._slots.clear()
            self._strict = 0
            sink.write_frames(e.frame if type(e) is _Slot else e)  # type: ignore[union-attr,arg-type]
        else:
            sink.write_frames(b"".join(self._take()))

    def _resumed(self) -> None:
        self._stalled = False
        self._wake()

    def _push(self, item: bytes | _Slot, critical: bool) -> None:
        if len(self._q) >= self.max_total:
            code = CLOSE_CRITICAL_OVERFLOW if critical else CLOSE_SLOW
            self._fail(code, f"client too slow: {len(self._q)} messages pending")
            return
        self._q.append(item)
        if not self._flush_pending:
            self._wake()

    def _fail(self, code: int, reason: str) -> None:
        if self.failed is None:
            self.failed = (code, reason)
            self.failed_event.set()
        self.dropped += len(self._q)
        self._q.clear()
        self._slots.clear()
        self._strict = 0
        self._ready.set()

    def put_conflated(self, key: str, frame: str | bytes) -> None:
        if self.failed:
            return
        if type(frame) is not bytes or frame[0] != TEXT_FIN:
            frame = as_frame(frame)
        slot = self._slots.get(key)
        if slot is not None:
            slot.frame = frame  # type: ignore[assignment]
            self.conflated += 1
            QueueStats.conflated += 1
            return
        slot = _Slot(frame)  # type: ignore[arg-type]
        self._slots[key] = slot
        self._push(slot, False)

    def put_strict(self, frame: str | bytes) -> None:
        if self.failed:
            return
        if self._strict >= self.max_strict:
            self._fail(CLOSE_SLOW, f"client too slow: more than {self.max_strict} trades pending")
            return
        if type(frame) is not bytes or frame[0] != TEXT_FIN:
            frame = as_frame(frame)
        self._strict += 1
        self._push(frame, False)  # type: ignore[arg-type]

    def put_critical(self, frame: str | bytes) -> None:
        if self.failed:
            return
        self._push(as_frame(frame), True)

    def close(self, code: int, reason: str) -> None:
        self._fail(code, reason)

    async def pump(self, send_text: Callable[[str], Awaitable[None]]) -> None:
        """The connection's writer: returns once the queue has failed (the connection must then close).

        With a sink attached there is nothing to do but wait; otherwise every pending frame is taken at
        once (one wake-up per batch) and sent through ``send_text``.
        """
        if self._sink is not None:
            await self.failed_event.wait()
            return
        while True:
            while not self._q:
                if self.failed:
                    return
                self._ready.clear()
                await self._ready.wait()
            if self.failed:
                return
            self._sending = True
            try:
                for frame in self._take():
                    await send_text(payload_of(frame).decode())
                    QueueStats.sent += 1
                    if self.failed:
                        return
            finally:
                self._sending = False
