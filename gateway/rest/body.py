"""Request bodies: read once, bounded, parsed strictly and exactly, before any route sees them.

``BodyLimitMiddleware`` (pure ASGI, outside FastAPI) reads the whole body first (it is small by construction) and answers itself:

- 413 ``payload_too_large`` when ``Content-Length`` announces more than the limit, or when a body without
  it (chunked) grows past the limit. Up to ``DRAIN_BYTES`` of the excess is read and dropped first (for at
  most ``DRAIN_S``) so that an ordinary client still reads the 413 instead of a reset connection; beyond
  that the answer comes at once and the connection is closed;
- 400 ``invalid_json`` when a JSON body (``application/json`` or ``+json``) is not strict JSON
  (``gateway.jsonio.loads``: malformed, NaN/Infinity, nested too deeply, not UTF-8).

A JSON body that passes is parsed once and left in the scope under ``SCOPE_JSON_KEY`` for ``JsonRoute``;
the raw bytes are replayed to the application unchanged. WebSocket and lifespan scopes pass through.

``JsonRoute`` (every router made by ``api_router``) hands that parse to FastAPI, so a JSON number keeps its
exact digits (a route on a plain ``APIRouter`` still gets every refusal, but a number of more than 15
significant digits may reach it rounded by a float), and refuses bodies that are not JSON (415).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, params
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import jsonio
from gateway.rest.errors import INTERNAL_ERROR, error_body
from shared.errors import DomainError

DEFAULT_MAX_BODY = 64 * 1024
DRAIN_BYTES = 1024 * 1024
DRAIN_S = 2.0
SCOPE_JSON_KEY = "sr.json_body"


def is_json_content_type(value: str) -> bool:
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def is_form_content_type(value: str) -> bool:
    media = value.split(";", 1)[0].strip().lower()
    return media in ("application/x-www-form-urlencoded", "multipart/form-data")


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


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read, then whatever ``receive`` gives (a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctype = ""
        longest = -1  # the largest Content-Length announced (-1: none)
        chunked = False
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
                    await _reply(send, 413, "payload_too_large", f"request body larger than {self.max_bytes} bytes")
                    return
                longest = max(longest, announced)
            elif name == b"content-type":
                ctype = value.decode("latin-1")
            elif name == b"transfer-encoding":
                chunked = True
        if longest <= 0 and not chunked:
            # No body (Content-Length: 0, or neither header: HTTP/1.1 then has none): nothing to read, bound or
            # parse, so the application reads the server's own (empty) body.
            await self.app(scope, receive, send)
            return
        await self._with_body(scope, receive, send, ctype)

    async def _with_body(self, scope: Scope, receive: Receive, send: Send, ctype: str) -> None:
        too_big = f"request body larger than {self.max_bytes} bytes"

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
                scope[SCOPE_JSON_KEY] = jsonio.loads(body)
            except jsonio.BadJson as e:
                await _reply(send, 400, "invalid_json", str(e))
                return

        await self.app(scope, replaying(body, receive), send)


class JsonRequest(Request):
    """A request whose ``json()`` is the strict, Decimal-keeping parse (done once, by the middleware)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            if SCOPE_JSON_KEY in self.scope:
                self._json = self.scope[SCOPE_JSON_KEY]
            else:
                self._json = jsonio.loads(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """An ``APIRoute`` reading JSON bodies with ``gateway.jsonio`` and refusing other body types (415)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        wants_json = self.body_field is not None and not isinstance(self.body_field.field_info, params.Form)

        async def route_handler(request: Request) -> Response:
            req = JsonRequest(request.scope, request.receive)
            if wants_json:
                ctype = req.headers.get("content-type", "")
                if not is_json_content_type(ctype) and await req.body():
                    raise DomainError("unsupported_media_type",
                                      f"send the body as application/json (got {ctype[:60] or 'no content type'})")
            return await handler(req)

        return route_handler


def api_router(**kw: Any) -> APIRouter:
    """An ``APIRouter`` whose routes parse JSON strictly and exactly (see the module docstring), and document
    the internal error."""
    return APIRouter(route_class=JsonRoute, responses=INTERNAL_ERROR, **kw)
