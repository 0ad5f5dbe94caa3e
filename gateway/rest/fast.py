"""``POST /orders`` served as plain ASGI in front of FastAPI, for the request that passes every check.

The hot route of the API spent more CPU in FastAPI's per-request machinery (its middleware stack, dependency solving,
request and response objects) than in its own work. ``GatewayApp`` (``gateway.app``) hands ``POST /orders`` to
``FastPlace`` before any of it, and ``FastPlace`` runs the same steps with the same objects: the body read and parsed
as ``BodyLimitMiddleware`` does (``gateway.jsonio``), the route's own authentication dependency (the route's
``TradeDep``, whatever it checks), ``PlaceOrderIn`` validation (``plain_place`` for the usual body),
``Trading.place``, the answer ``order_json`` writes, and the request timed for the HTTP latency metric.
A request it does not take on (another content type, no Content-Length, too large, chunked), or that fails JSON
parsing, authentication or validation, goes to FastAPI with its body replayed (nothing has happened yet) and gets
FastAPI's answer, so every refusal keeps one implementation; a refusal by the service is answered as
``gateway.rest.errors`` answers it. The OpenAPI document still comes from the route
(``gateway/rest/routes/orders.py``), which also serves whatever this one passes on. tests/test_rest_fast.py
compares both paths' answers.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterable
from typing import Any, get_args, get_type_hints

from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import jsonio
from gateway.metrics import observe_http
from gateway.rest.body import is_json_content_type, replaying
from gateway.rest.errors import service_error_response, unhandled_response
from gateway.rest.models import order_content
from gateway.services.requests import PlaceOrderIn, plain_place

log = logging.getLogger(__name__)
PATH = "/orders"
_JSON = b"application/json"


def _trader_dependency(route: BaseRoute | None) -> Any:
    """The route's own authentication dependency when it resolves from the request alone, else None (then every
    request goes through FastAPI, which resolves whatever it has become). Taken from the route, not from ``deps``,
    so the scope it checks (an API key's ``trade``) is the route's."""
    endpoint = getattr(route, "endpoint", None)
    if endpoint is None:
        return None
    for hint in get_type_hints(endpoint, include_extras=True).values():
        for meta in get_args(hint)[1:]:
            dep = getattr(meta, "dependency", None)
            if dep is None:
                continue
            params = list(inspect.signature(dep).parameters.values())
            if len(params) == 1 and params[0].annotation in (Request, "Request"):
                return dep
    return None


def _json_length(headers: Iterable[tuple[bytes, bytes]], max_bytes: int) -> int:
    """The body length a plain JSON request announces (one Content-Length, 1 .. ``max_bytes``; a JSON content
    type; not chunked), else -1: FastAPI's side takes that request as it comes."""
    length = -1
    is_json = False
    for name, value in headers:
        if name == b"content-length":
            if length != -1 or not value.isdigit():
                return -1
            length = int(value)
        elif name == b"content-type":
            is_json = value == _JSON or is_json_content_type(value.decode("latin-1"))
        elif name == b"transfer-encoding":
            return -1
    return length if is_json and 0 < length <= max_bytes else -1


class FastPlace:
    def __init__(self, app: ASGIApp, inner: ASGIApp, routes: list[BaseRoute], max_bytes: int) -> None:
        self.app = app  # what ``request.app`` is (the dependency reads the services from its state)
        self.inner = inner  # FastAPI's own handling of the request
        self.max_bytes = max_bytes
        # the route's own object, for what reads scope["route"]
        self.route = next((r for r in routes if getattr(r, "path", None) == PATH
                           and "POST" in (getattr(r, "methods", None) or ())), None)
        self.trader = _trader_dependency(self.route)
        if self.trader is None or self.route is None:
            self.trader = None
            log.warning("POST %s goes through FastAPI: its authentication dependency needs more than the request",
                        PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = -1 if self.trader is None else _json_length(scope["headers"], self.max_bytes)
        if length < 0:
            await self.inner(scope, receive, send)
            return
        start = time.perf_counter()
        chunks: list[bytes] = []
        while True:  # the server frames the body by its Content-Length: at most max_bytes arrive
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        replay = replaying(raw, receive)
        scope["app"] = self.app
        try:
            data = jsonio.loads(raw)
            trader = await self.trader(Request(scope, replay))
            body = plain_place(data) or PlaceOrderIn.model_validate(data)
        except Exception:
            # Bad JSON, a refusal, or Redis unreachable while authentication reads a user's revocation state:
            # nothing has happened yet, so FastAPI answers it as for any other request (400/401/403/422, 503).
            await self.inner(scope, replay, send)
            return
        scope["route"] = self.route
        try:
            placed = await trader.trading.place(trader.user_id, body)
        except Exception as e:
            response = service_error_response(e) or unhandled_response("POST", PATH, e)
            await response(scope, replay, send)
            observe_http("POST", PATH, response.status_code, time.perf_counter() - start)
            return
        content = jsonio.dumps(order_content(placed.order, placed.fills))
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-length", b"%d" % len(content)), (b"content-type", _JSON)]})
        await send({"type": "http.response.body", "body": content})
        observe_http("POST", PATH, 201, time.perf_counter() - start)
