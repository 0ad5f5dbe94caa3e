"""What the OpenAPI document says beyond what FastAPI derives from the models.

- Links between operations (OpenAPI 3.1): how the answer of one request feeds the next. ``add_links(spec)``
  adds them.
- The configured values: ``add_config_enums(spec, settings)`` lists the configured assets and pairs as the
  ``enum`` of ``DepositIn.asset`` and ``PlaceOrderIn.symbol`` (the models only say "a string").

``install(app, settings)`` applies both once, when ``/openapi.json`` is first asked for. Clients and tools read them as "what can I do next": after
``POST /orders`` the order's ``token_id`` (from the answer) addresses ``GET``/``PUT``/``DELETE
/orders/{token_id}``; after ``POST /register`` the same username and password log in; after ``POST /api-keys`` its
``id`` deletes it. Schemathesis' stateful
phase chains requests along them (tests/test_fuzz_rest.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from shared.settings import Settings

ORDER = "/orders/{token_id}"
TOKEN_FROM_BODY = {"token_id": "$response.body#/token_id"}
Link = tuple[str, str, dict[str, Any]]
# From an order in the answer to what can be done with it next.
ORDER_LINKS: dict[str, Link] = {
    "GetOrder": ("get", ORDER, {"parameters": TOKEN_FROM_BODY}),
    "ModifyOrder": ("put", ORDER, {"parameters": TOKEN_FROM_BODY}),
    "CancelOrder": ("delete", ORDER, {"parameters": TOKEN_FROM_BODY}),
}

# (method, path, status) of the answer -> {link name: (method, path of the next operation, link fields)}
LINKS: dict[tuple[str, str, str], dict[str, Link]] = {
    ("post", "/register", "201"): {
        "Login": ("post", "/login", {"requestBody": {"username": "$request.body#/username",
                                                     "password": "$request.body#/password"}}),
    },
    ("post", "/orders", "201"): ORDER_LINKS,
    ("put", ORDER, "200"): ORDER_LINKS,
    ("get", ORDER, "200"): {k: v for k, v in ORDER_LINKS.items() if k != "GetOrder"},
    # A cancelled order stays readable (status `cancelled`); modifying or cancelling it again is a 409.
    ("delete", ORDER, "200"): ORDER_LINKS,
    ("post", "/api-keys", "201"): {
        "DeleteApiKey": ("delete", "/api-keys/{key_id}", {"parameters": {"key_id": "$response.body#/id"}}),
    },
}


def add_links(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``LINKS`` added to its responses (in place; returned for convenience). Each link names its
    target by ``operationId``; a missing operation is a ``KeyError`` (a route was renamed: fix ``LINKS``)."""
    paths = spec["paths"]
    for (method, path, status), links in LINKS.items():
        response = paths[path][method]["responses"][status]
        out = response.setdefault("links", {})
        for name, (to_method, to_path, fields) in links.items():
            out[name] = {"operationId": paths[to_path][to_method]["operationId"], **fields}
    return spec


def add_config_enums(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    schemas["DepositIn"]["properties"]["asset"]["enum"] = list(settings.assets)
    schemas["PlaceOrderIn"]["properties"]["symbol"]["enum"] = list(settings.symbols)
    return spec


def install(app: FastAPI, settings: Settings) -> None:
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_config_enums(add_links(plain()), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
