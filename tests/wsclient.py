"""A real WebSocket client for gateway tests (websockets' asyncio API) with small helpers."""

from __future__ import annotations

import asyncio
import contextlib
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
