"""uvicorn's WebSocket protocol with a zero-copy path for pre-built frames (see ``gateway.wsframe``).

Going through ASGI, every ``send_text`` costs a message dict, an awaited send, UTF-8 encoding, frame
building by the protocol and one ``transport.write`` (one syscall) per message. This subclass of
uvicorn's ``websockets-sansio`` implementation (chosen by measurement, docs/gateway-ws.md) offers the
application a *frame sink* through the ASGI scope extension ``FRAMES_EXTENSION``: the client's queue
writes its pending frames, already framed, in one ``transport.write`` per event-loop turn, with no task
wake-up. Everything else (handshake, receiving, close, pings) is uvicorn's. The sink is only offered
when no WebSocket extension was negotiated, as the shared frames are uncompressed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

FRAMES_EXTENSION = "simple_router.frames"


class FrameSink(WebSocketsSansIOProtocol):
    """The protocol instance is the sink: ``write_frames``, ``writable`` and ``on_resume``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_resume: Callable[[], None] | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.conn.extensions:
            scope["extensions"][FRAMES_EXTENSION] = {"sink": self}

    def writable_now(self) -> bool:
        """False while the transport's buffer is above its high-water mark (``on_resume`` follows)."""
        return self.writable.is_set()

    def write_frames(self, data: bytes) -> None:
        # Once closing, frames are dropped like uvicorn drops sends after a close.
        if self.handshake_complete and not self.close_sent and not self.disconnected \
                and not self.transport.is_closing():
            self.transport.write(data)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_resume is not None:
            self.on_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.on_resume is not None:  # lets the queue notice, like a resumed writer would
            self.on_resume()
        self.on_resume = None


def frame_sink(scope: dict[str, Any]) -> FrameSink | None:
    ext = scope.get("extensions") or {}
    entry = ext.get(FRAMES_EXTENSION)
    return entry["sink"] if entry else None


# uvicorn options for the gateway (``python -m gateway`` and the tests' servers).
UVICORN_WS_OPTIONS: dict[str, Any] = {
    "ws": FrameSink,
    "ws_max_size": 64 * 1024,
    # Per-client deflate would compress every message once per client: off, so frames can be shared.
    "ws_per_message_deflate": False,
}
