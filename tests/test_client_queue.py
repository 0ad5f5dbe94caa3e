"""``ClientQueue`` without sockets: a sink that records what is written, driven by the event loop's flush."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.realtime.frames import payload_of, text_frame
from gateway.realtime.queue import CLOSE_CRITICAL_OVERFLOW, CLOSE_SLOW, ClientQueue


class _Sink:
    on_resume: Any = None

    def __init__(self) -> None:
        self.writable = True
        self.written: list[bytes] = []

    def writable_now(self) -> bool:
        return self.writable

    def write_frames(self, data: bytes) -> None:
        self.written.append(data)


def _frames(data: list[bytes]) -> list[str]:
    """The payloads of concatenated frames (short ones: one length byte)."""
    out, buf = [], b"".join(data)
    while buf:
        n = buf[1]
        out.append(payload_of(buf[:2 + n]).decode())
        buf = buf[2 + n:]
    return out


def _f(text: str) -> bytes:
    return text_frame(text.encode())


def test_one_write_per_loop_turn_in_order_with_conflation_in_place() -> None:
    async def run() -> None:
        q, sink = ClientQueue(10, 100), _Sink()
        q.attach(sink)
        q.put_strict(_f("t1"))
        q.put_conflated("bt", _f("bt1"))
        q.put_strict(_f("t2"))
        q.put_conflated("bt", _f("bt2"))  # replaces bt1 where it stood
        q.put_critical_frames([_f("h1"), _f("h2")])
        await asyncio.sleep(0)
        assert len(sink.written) == 1 and _frames(sink.written) == ["t1", "bt2", "t2", "h1", "h2"]
        sink.writable = False
        q.put_strict(_f("t3"))
        await asyncio.sleep(0)
        assert len(sink.written) == 1 and len(q) == 1  # stalled until the transport resumes
        sink.writable = True
        q._resumed()
        await asyncio.sleep(0)
        assert _frames(sink.written) == ["t1", "bt2", "t2", "h1", "h2", "t3"] and q.idle

    asyncio.run(run())


def test_overflows_close_with_their_codes_and_drop_everything() -> None:
    async def run() -> None:
        q = ClientQueue(3, 100)
        q.attach(_Sink())
        for i in range(4):
            q.put_strict(_f(f"t{i}"))
        assert q.failed is not None and q.failed[0] == CLOSE_SLOW and len(q) == 0

        q = ClientQueue(1000, 5)
        q.attach(_Sink())
        q.put_critical_frames([_f("a")] * 3)
        q.put_critical_frames([_f("b")] * 3)  # 6 > 5: refused as a whole, the client is closed
        assert q.failed is not None and q.failed[0] == CLOSE_CRITICAL_OVERFLOW and len(q) == 0 and q.dropped == 3
        q.put_strict(_f("late"))
        assert len(q) == 0

        q = ClientQueue(1000, 2)
        q.attach(_Sink())
        q.put_conflated("a", _f("a"))
        q.put_conflated("b", _f("b"))
        q.put_conflated("a", _f("a2"))  # a replacement takes no room
        assert q.failed is None
        q.put_conflated("c", _f("c"))
        assert q.failed is not None and q.failed[0] == CLOSE_SLOW

    asyncio.run(run())
