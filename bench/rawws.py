"""A minimal WebSocket load client for the fan-out benchmark: raw asyncio protocol, no library.

It parses the server's frames itself (unmasked, unfragmented text frames from the gateway), counts them,
and only looks inside a sampled payload for its ``"ts_recv_us":`` to compute the latency; it answers
pings and masks what it sends, as RFC 6455 requires of a client. About 1 µs of CPU per message against
~10-18 µs for the ``websockets`` library, so the benchmark measures the gateway rather than its clients.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

KEY = b'"ts_recv_us":'


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes((0x80 | opcode,)) + (bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + n.to_bytes(2, "big"))
    m = int.from_bytes((mask * (n // 4 + 1))[:n], "big") if n else 0
    body = (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big") if n else b""
    return head + mask + body


TYPE = b'{"type":"'


class Stats:
    """What the clients sharing it received while ``on``. ``by_type``: latencies are also kept per message type
    (``best_touch``, ``trades``...), and ``skip`` names types whose ``ts_recv_us`` is not a delivery time (klines:
    that of the candle's last trade), left out of ``lat``."""

    __slots__ = ("on", "count", "lat", "sample_every", "closed", "by_type", "skip")

    def __init__(self, sample_every: int = 4, by_type: bool = False, skip: tuple[bytes, ...] = ()) -> None:
        self.on = False
        self.count = 0
        self.lat: list[int] = []
        self.sample_every = sample_every
        self.closed = 0
        self.by_type: dict[bytes, list[int]] | None = {} if by_type else None
        self.skip = skip


class RawClient(asyncio.Protocol):
    def __init__(self, stats: Stats, request: bytes) -> None:
        self.stats = stats
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.on_text: Callable[[bytes], None] | None = None  # each text payload received while stats.on
        self.buf = b""
        self.open = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(1, text.encode()))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail(ConnectionError(buf[:end].decode(errors="replace")))
                return
            self.open = True
            buf = buf[end + 4:]
            if not self.opened.done():
                self.opened.set_result(None)
        st = self.stats
        pos, size = 0, len(buf)
        count = 0
        while size - pos >= 2:
            n = buf[pos + 1] & 0x7F
            if n < 126:
                start = pos + 2
            elif n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
                start = pos + 4
            else:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + n
            if end > size:
                break
            op = buf[pos] & 0x0F
            pos = end
            if op == 1:
                count += 1
                if self.on_text is not None and st.on:
                    self.on_text(bytes(buf[start:end]))
                if st.on and (st.count + count) % st.sample_every == 0:
                    p = buf.rfind(KEY, start, end)
                    if p > 0:
                        q = p + len(KEY)
                        e = q
                        while e < end and 48 <= buf[e] <= 57:
                            e += 1
                        ts = int(buf[q:e]) if e > q else 0
                        if ts > 0:  # 0: a best touch with no quote yet
                            self._sample(buf, start, end, time.time_ns() // 1000 - ts)
            elif op == 9 and self.transport is not None:  # ping: pong with the same payload
                self.transport.write(client_frame(10, bytes(buf[start:end])))
            elif op == 8:
                self._fail(ConnectionError(f"closed by the server: {bytes(buf[start:end])[:80]!r}"))
                return
        if st.on:
            st.count += count
        self.buf = buf[pos:] if pos < size else b""

    def _sample(self, buf: bytes, start: int, end: int, lat: int) -> None:
        st = self.stats
        if st.by_type is None and not st.skip:
            st.lat.append(lat)
            return
        kind = b""
        if buf.startswith(TYPE, start):
            q = buf.find(b'"', start + len(TYPE), end)
            kind = bytes(buf[start + len(TYPE):q]) if q > 0 else b""
        if kind not in st.skip:
            st.lat.append(lat)
        if st.by_type is not None:
            st.by_type.setdefault(kind, []).append(lat)

    def _fail(self, e: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(e)
        if not self.done.done():
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection lost"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(8, (1000).to_bytes(2, "big")))
            self.transport.close()


async def connect(url: str, stats: Stats, open_timeout: float = 60) -> RawClient:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    path = u.path + (f"?{u.query}" if u.query else "")
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: RawClient(stats, req), host, port), open_timeout)
    await asyncio.wait_for(proto.opened, open_timeout)
    return proto


def self_cpu() -> float:
    """CPU seconds this process has used (user + system)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def load_clients(clients: list[tuple[str, list[str]]], st: Stats, cmds: Any, results: Any, tag: Any,
                       settle_s: float = 0.0) -> None:
    """A load process's clients: each ``(url, texts)`` connects (50 at a time) and sends its texts (subscriptions);
    once all are up (or failed: counted as closed) and ``settle_s`` later, ``("ready", tag)`` goes on ``results``.
    Then commands from ``cmds``: "start" counts from zero, "stop" puts ``("stats", {count, lat, secs, cpu,
    closed})``, anything else closes every client and returns."""
    conns: list[RawClient] = []
    sem = asyncio.Semaphore(50)

    async def client(url: str, texts: list[str]) -> None:
        async with sem:
            try:
                c = await connect(url, st)
            except Exception:  # noqa: BLE001 - counted, not fatal
                st.closed += 1
                return
            conns.append(c)
            for text in texts:
                c.send_text(text)
        await c.done
        st.closed += 1

    tasks = [asyncio.create_task(client(url, texts)) for url, texts in clients]
    loop = asyncio.get_running_loop()
    while len(conns) + st.closed < len(clients):  # noqa: ASYNC110 - a simple start-up poll
        await asyncio.sleep(0.1)
    await asyncio.sleep(settle_s)
    results.put(("ready", tag))
    t0 = cpu0 = 0.0
    while True:
        cmd = await loop.run_in_executor(None, cmds.get)
        if cmd == "start":
            st.count, st.lat, st.on = 0, [], True
            t0, cpu0 = time.monotonic(), self_cpu()
        elif cmd == "stop":
            st.on = False
            results.put(("stats", {"count": st.count, "lat": st.lat, "secs": time.monotonic() - t0,
                                   "cpu": self_cpu() - cpu0, "closed": st.closed}))
        else:
            break
    for c in conns:
        c.close()
    for t in tasks:
        t.cancel()
