"""The one error shape every route returns: ``{"detail": "<readable>", "code": "<stable_code>"}``, and the one
table from the domain's error codes to HTTP statuses (``STATUS``).

Routes and services raise ``shared.errors.DomainError(code, message)``; here it becomes a response with the
status ``STATUS[code]`` (401 adds ``WWW-Authenticate: Bearer``; ``retry_after_s`` adds ``Retry-After``).
Everything else is mapped too:

- request validation (FastAPI's ``RequestValidationError``) -> 422 with the code of the first error
  (``validation_error`` or a field's own code, ``gateway.services.requests``), a readable ``detail``
  (``"password: must be 8 to 72 bytes in UTF-8; amount: must be a number"``) and ``errors``:
  ``[{"loc": ["body", "amount"], "msg": "...", "type": "..."}]``, all JSON-safe (the input value is never echoed
  back: FastAPI's own handler crashes with 500 on NaN input trying to);
- ``HTTPException`` (including the router's 404 and 405) -> same shape, code from the status;
- Redis unreachable -> 503 ``unavailable`` with ``Retry-After``;
- anything unhandled -> 500 ``{"detail": "internal error", "code": "internal"}``, logged with traceback.

``error_responses(401, 404, ...)`` documents those statuses with ``ErrorOut`` in OpenAPI.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import AskError, ClusterError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.services.requests import API_CODES, VALIDATION_ERROR, Refused, refusal
from shared.errors import DomainError

log = logging.getLogger(__name__)

# Every code a DomainError may carry -> its HTTP status (tests/test_layering.py checks that every code raised
# in the code base is here).
STATUS: dict[str, int] = {
    # the request itself
    "bad_request": 400, "invalid_json": 400, "unsupported_media_type": 415, "payload_too_large": 413,
    VALIDATION_ERROR: 422, **{code: 422 for code in sorted(API_CODES)},
    # accounts
    "not_authenticated": 401, "invalid_token": 401, "invalid_credentials": 401, "username_taken": 409,
    "rate_limited": 429, "busy": 503, "unavailable": 503, "intake_timeout": 503,
    "insufficient_scope": 403, "session_required": 403, "wrong_password": 403, "key_not_found": 404,
    "too_many_keys": 409,
    # trading: the request against the configuration
    "unknown_symbol": 422, "unknown_asset": 422, "invalid_price": 422, "invalid_quantity": 422,
    "below_min_notional": 422, "too_precise": 422, "amount_too_large": 422, "invalid_amount": 422,
    "invalid_order": 422, "invalid_status": 422,
    # trading: the request against the account's state
    "insufficient_balance": 400, "order_not_found": 404, "duplicate_token_id": 409, "order_not_open": 409,
    "not_modifiable": 409, "invariant": 409, "overfill": 409, "overspend": 409, "partial_limit": 409,
}

# Default code of each status when nothing more specific was given (HTTPException, the router's 404/405).
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: VALIDATION_ERROR,
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}

# What each status means on this API, for the OpenAPI document.
STATUS_TEXT: dict[int, str] = {
    400: "Malformed request (e.g. body is not valid JSON, NaN/Infinity, nested too deeply)",
    401: "Missing, expired, forged or malformed token, or bad credentials",
    403: "Forbidden: an API key without the scope the route needs (`insufficient_scope`), or one used where a "
         "login is required (`session_required`)",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body larger than the limit",
    415: "Body is not JSON",
    422: "Request fails validation",
    429: "Too many attempts; see Retry-After",
    500: "Internal error",
    503: "Server busy; retry later",
}


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
    errors: list[ValidationIssue] = Field(default_factory=list,
                                          description="Present when the request failed schema validation")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "detail": "password: must be 8 to 72 bytes in UTF-8",
        "code": "validation_error",
        "errors": [{"loc": ["body", "password"], "msg": "must be 8 to 72 bytes in UTF-8", "type": "value_error"}],
    }]})


def status_of(code: str) -> int:
    status = STATUS.get(code)
    if status is None:
        log.error("error code %r has no HTTP status in gateway.rest.errors.STATUS: answering 400", code)
        return 400
    return status


def error_body(status: int, detail: str, code: str | None = None) -> dict[str, str]:
    return {"detail": detail, "code": code or STATUS_CODES.get(status, "error")}


def _json(content: Any, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, headers=headers, media_type="application/json")


# Every route documents it (``api_router`` and the operations router add it to each of their routes).
INTERNAL_ERROR: dict[int | str, dict[str, Any]] = {500: {"model": ErrorOut, "description": "Internal error"}}


def error_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for these statuses; ``s409="token_id already used"`` overrides a description."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        out[s] = {
            "model": ValidationErrorOut if s == 422 else ErrorOut,
            "description": descriptions.get(f"s{s}", STATUS_TEXT.get(s, "Error")),
        }
    return out


def domain_response(e: DomainError) -> Response:
    status = status_of(e.code)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if e.retry_after_s is not None:
        headers["Retry-After"] = str(e.retry_after_s)
    body: dict[str, Any] = error_body(status, e.message, e.code)
    if isinstance(e, Refused):
        body["errors"] = e.issues
    return _json(body, status, headers or None)


async def _domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return domain_response(exc)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return domain_response(refusal(exc.errors()))


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else STATUS_TEXT.get(exc.status_code, "error")
    return _json(error_body(exc.status_code, detail), status_code=exc.status_code,
                 headers=getattr(exc, "headers", None))


async def _redis_down(_: Request, exc: Exception) -> Response:
    response = service_error_response(exc)
    assert response is not None
    return response


async def _unhandled(request: Request, exc: Exception) -> Response:
    return unhandled_response(request.method, request.url.path, exc)


def unhandled_response(method: str, path: str, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return _json(error_body(500, "internal error", "internal"), status_code=500)


_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ClusterError, AskError, TryAgainError, RedisClusterException)


def service_error_response(exc: Exception) -> Response | None:
    """What ``install``'s handlers answer to a service's ``DomainError`` or a Redis outage, for a route served in
    front of FastAPI's exception handling (``gateway.rest.fast``); None for anything else."""
    if isinstance(exc, DomainError):
        return domain_response(exc)
    if isinstance(exc, _REDIS_DOWN):
        log.warning("redis unavailable: %s", exc)
        return domain_response(DomainError("unavailable", "storage temporarily unavailable, try again",
                                           retry_after_s=1))
    return None


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    for transient in (ClusterError, AskError, TryAgainError, RedisClusterException):  # a cluster failing over
        app.add_exception_handler(transient, _redis_down)
    app.add_exception_handler(Exception, _unhandled)
