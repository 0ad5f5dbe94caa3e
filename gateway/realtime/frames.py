"""Server-to-client WebSocket frames built once and written as is to every subscriber.

A server frame is never masked (RFC 6455 §5.1), so a text frame (header + payload) is the same bytes
for every client that gets that message: the hub builds it once per topic and each client's queue holds
a reference to it. Only valid without a negotiated extension (no permessage-deflate).
"""

from __future__ import annotations

TEXT_FIN = 0x81  # FIN + opcode 1 (text)


def text_frame(payload: bytes) -> bytes:
    """One complete, unfragmented, unmasked text frame carrying ``payload`` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        return bytes((TEXT_FIN, n)) + payload
    if n < 1 << 16:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def is_frame(data: bytes) -> bool:
    """A frame from ``text_frame`` (UTF-8 text never starts with the byte 0x81)."""
    return bool(data) and data[0] == TEXT_FIN


def payload_of(frame: bytes) -> bytes:
    """The payload of a frame made by ``text_frame``."""
    n = frame[1]
    return frame[2:] if n < 126 else frame[4:] if n == 126 else frame[10:]


def as_frame(data: str | bytes) -> bytes:
    """``data`` as a frame: a ``str`` or JSON ``bytes`` is framed, a frame is returned as is."""
    if isinstance(data, str):
        return text_frame(data.encode())
    return data if is_frame(data) else text_frame(data)
