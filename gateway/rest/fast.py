"""``POST /orders`` served as plain ASGI in front of FastAPI, for the request that passes every check.

The hot route of the API spent more CPU in FastAPI's per-request machinery (dependency solving, request and
response objects, the exception middleware) than in its own work. ``FastPlace`` runs the same steps with the same
objects: the body ``BodyLimitMiddleware`` already parsed, the route's own authentication dependency
(the route's ``TradeDep``, whatever it checks), ``PlaceOrderIn`` validation (``plain_place`` for the usual body),
``Trading.place`` and ``order_json``.
A request it does not take on, or that fails authentication or validation, goes to FastAPI untouched (nothing has
happened yet) and gets FastAPI's answer, so every refusal keeps one implementation; a refusal by the service is
answered as ``gateway.rest.errors`` answers it. The OpenAPI document still comes from the route
(``gateway/rest/routes/orders.py``), which also serves whatever this one passes on.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, get_args, get_type_hints

from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.rest.body import SCOPE_JSON_KEY
from gateway.rest.errors import service_error_response
from gateway.rest.models import order_json
from gateway.services.requests import PlaceOrderIn, plain_place

log = logging.getLogger(__name__)
PATH = "/orders"


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


class FastPlace:
    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        # the route's own object, for what reads scope["route"] (the metrics' route label)
        self.route = next((r for r in routes if getattr(r, "path", None) == PATH
                           and "POST" in (getattr(r, "methods", None) or ())), None)
        self.trader = _trader_dependency(self.route)
        if self.trader is None:
            log.warning("POST %s goes through FastAPI: its authentication dependency needs more than the request",
                        PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST" or self.trader is None
                or self.route is None or not isinstance(scope.get(SCOPE_JSON_KEY), dict)):
            await self.app(scope, receive, send)
            return
        try:
            trader = await self.trader(Request(scope, receive))
            data = scope[SCOPE_JSON_KEY]
            body = plain_place(data) or PlaceOrderIn.model_validate(data)
        except Exception:
            # A refusal, or Redis unreachable while authentication reads a user's revocation state: nothing has
            # happened yet, so FastAPI answers it as for any other route (its handlers: 401/403/422, 503).
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        try:
            placed = await trader.trading.place(trader.user_id, body)
        except Exception as e:
            response = service_error_response(e)
            if response is None:
                raise
            await response(scope, receive, send)
            return
        await order_json(placed.order, placed.fills, status_code=201)(scope, receive, send)
