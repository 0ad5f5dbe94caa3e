"""The one error shape every route returns: ``{"detail": "<readable>", "code": "<stable_code>"}``.

Raise ``ApiError(status, code, detail)`` from routes. Everything else is mapped here:

- request validation (FastAPI's ``RequestValidationError``) -> 422 ``validation_error`` with a readable
  ``detail`` (``"password: must be 8 to 72 bytes in UTF-8; amount: must be a number"``) and ``errors``:
  ``[{"loc": ["body", "amount"], "msg": "...", "type": "..."}]``, all JSON-safe (the input value is
  never echoed back: FastAPI's own handler crashes with 500 on NaN input trying to);
- ``HTTPException`` (including the router's 404 and 405) -> same shape, code from the status;
- anything unhandled -> 500 ``{"detail": "internal error", "code": "internal"}``, logged with traceback.

``error_responses(401, 404, ...)`` documents those statuses with ``ErrorOut`` in OpenAPI.

A field or model may carry its own stable code instead of ``validation_error``: a validator raising
``PydanticCustomError(code, message)`` with a ``code`` registered by ``register_codes(...)`` (see
``gateway.schemas.coded``). The first error of a request decides the code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("gateway.errors")

# Default code of each status when nothing more specific was given.
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}

# What each status means on this API, for the OpenAPI document.
STATUS_TEXT: dict[int, str] = {
    400: "Malformed request (e.g. body is not valid JSON, NaN/Infinity, nested too deeply)",
    401: "Missing, expired, forged or malformed token, or bad credentials",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body larger than the limit",
    415: "Body is not JSON",
    422: "Request fails validation",
    429: "Too many attempts; see Retry-After",
    500: "Internal error",
    503: "Server busy; retry later",
}


# Pydantic error types that are stable API codes of their own (``gateway.schemas.coded`` registers them).
API_CODES: set[str] = set()


def register_codes(*codes: str) -> None:
    API_CODES.update(codes)


class ErrorOut(BaseModel):
    detail: str
    code: str

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "order not found", "code": "not_found"}]})


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(ErrorOut):
    # Only request validation fills it; a route's own 422 (``unknown_asset``...) is a plain ErrorOut.
    errors: list[ValidationIssue] = Field(default_factory=list, description="Present when the request failed schema validation")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "detail": "password: must be 8 to 72 bytes in UTF-8",
        "code": "validation_error",
        "errors": [{"loc": ["body", "password"], "msg": "must be 8 to 72 bytes in UTF-8", "type": "value_error"}],
    }]})


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def _json(content: Any, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, headers=headers, media_type="application/json")


def error_body(status: int, detail: str, code: str | None = None) -> dict[str, str]:
    return {"detail": detail, "code": code or STATUS_CODES.get(status, "error")}


def error_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for these statuses; ``s409="token_id already used"`` overrides a description."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        out[s] = {
            "model": ValidationErrorOut if s == 422 else ErrorOut,
            "description": descriptions.get(f"s{s}", STATUS_TEXT.get(s, "Error")),
        }
    return out


def _safe_loc(loc: Sequence[Any]) -> list[str | int]:
    return [x if isinstance(x, int) and not isinstance(x, bool) else str(x)[:64] for x in loc]


_MESSAGES = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
    "json_invalid": "invalid JSON",
}


def _message(err: dict[str, Any]) -> str:
    kind = str(err.get("type", ""))
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg[:300]


def _field(loc: list[str | int]) -> str:
    parts = loc[1:] if loc and loc[0] == "body" else loc
    return ".".join(str(p) for p in parts) or "body"


def validation_payload(errors: Sequence[Any]) -> dict[str, Any]:
    issues: list[dict[str, Any]] = []
    for err in list(errors)[:20]:
        if not isinstance(err, dict):
            continue
        loc = _safe_loc(err.get("loc", ()))
        issues.append({"loc": loc, "msg": _message(err), "type": str(err.get("type", "value_error"))[:64]})
    detail = "; ".join(f"{_field(i['loc'])}: {i['msg']}" for i in issues) or "invalid request"
    code = issues[0]["type"] if issues and issues[0]["type"] in API_CODES else "validation_error"
    return {"detail": detail, "code": code, "errors": issues}


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _json(error_body(exc.status, exc.detail, exc.code), status_code=exc.status, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _json(validation_payload(exc.errors()), status_code=422)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else STATUS_TEXT.get(exc.status_code, "error")
    return _json(error_body(exc.status_code, detail), status_code=exc.status_code,
                          headers=getattr(exc, "headers", None))


async def _unhandled(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(error_body(500, "internal error", "internal"), status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
