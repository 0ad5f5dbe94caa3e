"""A real WebSocket client for gateway tests (websockets' asyncio API) with small helpers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from shared import tokens
from tests.servers import make_settings

SECRET = make_settings("redis://127.0.0.1:1/0").auth.jwt_secret


def token(user: str = "u1") -> str:
    return tokens.issue(user, SECRET, 3600)


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


@contextlib.asynccontextmanager
async def ws_client(base: str, *, tok: str | None = None, query: bool = True, **kw: Any) -> AsyncIterator[Client]:
    url = ws_url(base)
    headers = None
    if tok is not None and query:
        url += f"?token={tok}"
    elif tok is not None:
        headers = {"Authorization": f"Bearer {tok}"}
    async with connect(url, additional_headers=headers, open_timeout=5, close_timeout=2, **kw) as c:
        yield Client(c)


class Client:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.raw: list[str] = []

    async def send(self, o: Any) -> None:
        await self.conn.send(o if isinstance(o, str | bytes) else orjson.dumps(o).decode())

    async def recv(self, within: float = 3.0) -> dict[str, Any]:
        text = await asyncio.wait_for(self.conn.recv(), within)
        self.raw.append(text if isinstance(text, str) else text.decode())
        return orjson.loads(text)

    async def request(self, o: dict[str, Any], within: float = 3.0) -> dict[str, Any]:
        """Send and return the reply (the first ack/error/auth/pong that comes back)."""
        await self.send(o)
        return await self.until(lambda m: m["type"] in ("ack", "error", "auth", "pong"), within)

    async def until(self, pred: Callable[[dict[str, Any]], bool], within: float = 3.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while True:
            m = await self.recv(max(0.01, end - loop.time()))
            if pred(m):
                return m

    async def subscribe(self, **fields: Any) -> dict[str, Any]:
        reply = await self.request({"action": "subscribe", **fields})
        assert reply["type"] == "ack", reply
        return reply


class RawClient:
    """A WebSocket client on a bare socket with a tiny receive buffer that reads only when told to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    @classmethod
    async def open(cls, base: str, tok: str) -> RawClient:
        port = int(base.rsplit(":", 1)[1])
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(s, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(s, (f"GET /ws?token={tok} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                    "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        c = cls(s)
        while b"\r\n\r\n" not in c.buf:
            c.buf += await loop.sock_recv(s, 4096)
        head, c.buf = c.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0]
        return c

    async def send(self, o: dict[str, Any]) -> None:
        payload = orjson.dumps(o)
        assert len(payload) < 126
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, bytes([0x81, 0x80 | len(payload)]) + mask + body)

    async def _need(self, n: int, within: float) -> None:
        loop = asyncio.get_running_loop()
        while len(self.buf) < n:
            chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), within)
            if not chunk:
                raise EOFError
            self.buf += chunk

    async def frame(self, within: float = 10) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (servers do not mask)."""
        await self._need(2, within)
        op, ln = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        hdr = 2
        if ln == 126:
            await self._need(4, within)
            ln, hdr = struct.unpack("!H", self.buf[2:4])[0], 4
        elif ln == 127:
            await self._need(10, within)
            ln, hdr = struct.unpack("!Q", self.buf[2:10])[0], 10
        await self._need(hdr + ln, within)
        data, self.buf = self.buf[hdr:hdr + ln], self.buf[hdr + ln:]
        return op, data

    async def json(self, within: float = 10) -> dict[str, Any]:
        op, data = await self.frame(within)
        assert op == 1, (op, data[:100])
        return orjson.loads(data)
