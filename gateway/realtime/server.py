"""uvicorn's WebSocket protocol with a zero-copy path for pre-built frames (see ``gateway.realtime.frames``).

Going through ASGI, every ``send_text`` costs a message dict, an awaited send, UTF-8 encoding, frame
building by the protocol and one ``transport.write`` (one syscall) per message. This subclass of
uvicorn's ``websockets-sansio`` implementation (chosen by measurement, docs/gateway-ws.md) offers the
application a *frame sink* through the ASGI scope extension ``FRAMES_EXTENSION``: the client's queue
writes its pending frames, already framed, in one ``transport.write`` per event-loop turn, with no task
wake-up. Everything else (handshake, receiving, close, pings) is uvicorn's. The sink is only offered
when no WebSocket extension was negotiated, as the shared frames are uncompressed.

A client that stops reading must not keep its connection (and the frames buffered for it) forever: asyncio's
``transport.close()`` waits until every buffered byte has been sent, which a paused peer never allows. So
here a close never waits for the transport to become writable (the close frame goes behind what is pending),
and a transport closed with bytes still unsent is aborted after ``CLOSE_DRAIN_S``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

FRAMES_EXTENSION = "simple_router.frames"
CLOSE_TIMEOUT_S = 5.0  # after our close frame, wait this long for the client's (uvicorn: 10 s)
CLOSE_DRAIN_S = 5.0  # a closed transport still holding unsent bytes after this long is aborted


class _DrainDeadline:
    """The connection's transport, except that ``close()`` with bytes still buffered aborts after a deadline."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._loop = loop
        self.timer: asyncio.TimerHandle | None = None
        self.write = transport.write  # the hot path, without __getattr__
        self.is_closing = transport.is_closing

    def close(self) -> None:
        if self.timer is None and not self._t.is_closing() and self._t.get_write_buffer_size():
            self.timer = self._loop.call_later(CLOSE_DRAIN_S, self._t.abort)
        self._t.close()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


class FrameSink(WebSocketsSansIOProtocol):
    """The protocol instance is the sink: ``write_frames``, ``writable`` and ``on_resume``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_resume: Callable[[], None] | None = None
        self.close_timeout = CLOSE_TIMEOUT_S
        self._paused = False

    def connection_made(self, transport: Any) -> None:
        # A duck-typed proxy of the transport (``__getattr__`` gives the rest), not a subclass.
        super().connection_made(cast(asyncio.Transport, _DrainDeadline(transport, self.loop)))

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.conn.extensions:
            scope["extensions"][FRAMES_EXTENSION] = {"sink": self}

    def writable_now(self) -> bool:
        """False while the transport's buffer is above its high-water mark (``on_resume`` follows)."""
        return not self._paused  # pause/resume_writing's own flag: one attribute, per client per flush

    def write_frames(self, data: bytes) -> None:
        # Once closing, frames are dropped like uvicorn drops sends after a close.
        if self.handshake_complete and not self.close_sent and not self.disconnected \
                and not self.transport.is_closing():
            self.transport.write(data)

    def pause_writing(self) -> None:
        self._paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        super().resume_writing()
        if self.on_resume is not None:
            self.on_resume()

    async def send(self, message: Any) -> None:
        if message["type"] != "websocket.close" or not self._paused:
            await super().send(message)
            return
        # uvicorn waits for the transport to be writable before any send, a close included: a client that
        # stopped reading would hold it forever. The close frame is small; it queues behind the pending bytes.
        self.writable.set()
        try:
            await super().send(message)
        finally:
            if self._paused and not self.disconnected:
                self.writable.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(self.transport, _DrainDeadline):
            self.transport.cancel()
        super().connection_lost(exc)
        self._paused = False  # as uvicorn sets ``writable``: nothing will drain now, writes are dropped
        if self.on_resume is not None:  # lets the queue notice, like a resumed writer would
            self.on_resume()
        self.on_resume = None


def frame_sink(scope: Mapping[str, Any]) -> FrameSink | None:
    ext = scope.get("extensions") or {}
    entry = ext.get(FRAMES_EXTENSION)
    return entry["sink"] if entry else None


# uvicorn options for the gateway (``python -m gateway`` and the tests' servers).
UVICORN_OPTIONS: dict[str, Any] = {
    "ws": FrameSink,
    "ws_max_size": 64 * 1024,
    # Per-client deflate would compress every message once per client: off, so frames can be shared.
    "ws_per_message_deflate": False,
    # An idle keep-alive connection is closed after this long. Above the clients' own idle limits (httpx 5 s,
    # aiohttp 15 s), so a client never sends a request on a connection the server is closing at that moment
    # (uvicorn's default, 5 s, equals httpx's: a POST could fail with a reset, seen in tests under load).
    "timeout_keep_alive": 75,
}
