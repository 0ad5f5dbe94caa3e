"""Pure ASGI middleware guarding every HTTP route before FastAPI sees the request.

``BodyLimitMiddleware`` reads the whole body first (it is small by construction) and answers itself:

- 413 ``payload_too_large`` when ``Content-Length`` announces more than the limit, or when a body without
  it (chunked) grows past the limit. Up to ``DRAIN_BYTES`` of the excess is read and dropped first (for at
  most ``DRAIN_S``) so that an ordinary client still reads the 413 instead of a reset connection; beyond
  that the answer comes at once and the connection is closed;
- 400 ``invalid_json`` when a JSON body (``application/json`` or ``+json``) is not strict JSON
  (``gateway.strict_json``: malformed, NaN/Infinity, nested too deeply, not UTF-8).

A JSON body that passes is parsed once and left in the scope under ``SCOPE_JSON_KEY`` for ``JsonRoute``;
the raw bytes are replayed to the application unchanged. WebSocket and lifespan scopes pass through.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import strict_json
from gateway.errors import error_body
from gateway.schemas import SCOPE_JSON_KEY, is_json_content_type

DEFAULT_MAX_BODY = 64 * 1024
DRAIN_BYTES = 1024 * 1024
DRAIN_S = 2.0


async def _reply(send: Send, status: int, code: str, detail: str) -> None:
    body = orjson.dumps(error_body(status, detail, code))
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a body, within ``budget`` bytes and ``DRAIN_S`` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            while budget > 0:
                message = await receive()
                if message["type"] != "http.request":
                    return
                budget -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body larger than {self.max_bytes} bytes"
        ctype = ""
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = -1
                if announced < 0:
                    await _reply(send, 400, "bad_request", "invalid Content-Length")
                    return
                if announced > self.max_bytes:
                    if announced <= self.max_bytes + DRAIN_BYTES:
                        await _drain(receive, announced)
                    await _reply(send, 413, "payload_too_large", too_big)
                    return
            elif name == b"content-type":
                ctype = value.decode("latin-1")

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_BYTES)
                await _reply(send, 413, "payload_too_large", too_big)
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        if body and is_json_content_type(ctype):
            try:
                scope[SCOPE_JSON_KEY] = strict_json.loads(body)
            except strict_json.BadJson as e:
                await _reply(send, 400, "invalid_json", str(e))
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
