"""The bounded queue of outgoing frames of one WebSocket client: what the Redis hub's reader appends to.

Three classes of frames:

- conflated (best touch, klines, EWMA): a newer frame with the same key replaces a pending one in place;
- strict (trades): kept in order; too many pending closes the client (4008, "slow consumer");
- critical (replies, snapshots, a user's own order events): never dropped; past the hard cap the client
  is closed (4009) rather than losing one silently.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.metrics import QueueStats
from gateway.realtime.frames import TEXT_FIN, as_frame, payload_of

log = logging.getLogger(__name__)

CLOSE_SLOW = 4008
CLOSE_CRITICAL_OVERFLOW = 4009


class Sink(Protocol):
    """Where a queue writes pre-built frames directly (``gateway.realtime.server.FrameSink``)."""

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


class ClientQueue:
    """The outgoing frames of one client; appends never block.

    Frames are WebSocket frames (``gateway.realtime.frames``), usually built once per topic and shared by every
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
            fl = self._flusher
            assert fl is not None
            self._flush_pending = True
            fl.dirty.append(self)  # _Flusher.add, inlined: this runs once per subscriber per message
            if not fl.scheduled:
                fl.scheduled = True
                fl.loop.call_soon(fl.run)

    def _take(self) -> list[bytes]:
        frames = [e.frame if isinstance(e, _Slot) else e for e in self._q]
        self._q.clear()
        self._slots.clear()
        self._strict = 0
        return frames

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
            sink.write_frames(e.frame if isinstance(e, _Slot) else e)
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
            slot.frame = frame
            self.conflated += 1
            QueueStats.conflated += 1
            return
        if len(self._q) >= self.max_total:
            self._fail(CLOSE_SLOW, f"client too slow: {len(self._q)} messages pending")
            return
        slot = self._slots[key] = _Slot(frame)
        self._q.append(slot)  # _push, inlined
        if not self._flush_pending:
            self._wake()

    def put_strict(self, frame: str | bytes) -> None:
        if self.failed:
            return
        if self._strict >= self.max_strict:
            self._fail(CLOSE_SLOW, f"client too slow: more than {self.max_strict} trades pending")
            return
        if type(frame) is not bytes or frame[0] != TEXT_FIN:
            frame = as_frame(frame)
        if len(self._q) >= self.max_total:
            self._fail(CLOSE_SLOW, f"client too slow: {len(self._q)} messages pending")
            return
        self._strict += 1
        self._q.append(frame)  # _push, inlined
        if not self._flush_pending:
            self._wake()

    def put_critical(self, frame: str | bytes) -> None:
        if self.failed:
            return
        self._push(as_frame(frame), True)

    def put_critical_frames(self, frames: list[bytes]) -> None:
        """``put_critical`` of each of these ready frames (``frames.text_frame``), in one step."""
        if self.failed or not frames:
            return
        if len(self._q) + len(frames) > self.max_total:
            self._fail(CLOSE_CRITICAL_OVERFLOW, f"client too slow: {self.max_total} messages pending")
            return
        self._q.extend(frames)
        if not self._flush_pending:
            self._wake()

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
