"""Raw JSON bodies for the trading routes (and the WebSocket actions), read with ``gateway.strict_json``.

Numbers become ``Decimal`` with their exact digits, ``NaN``/``Infinity`` are refused, and anything that is
not a flat object with known fields is a 4xx with the one error shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from fastapi import Request

from gateway import strict_json
from gateway.errors import ApiError
from shared.money import MAX_AMOUNT, BadDecimal, parse_decimal

MAX_BODY_BYTES = 16 * 1024


def loads_strict(raw: bytes | str) -> Any:
    """``strict_json.loads`` with its refusals turned into the API's 400 ``invalid_json``."""
    try:
        return strict_json.loads(raw)
    except strict_json.BadJson as e:
        raise ApiError(400, "invalid_json", str(e)) from None


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, "body_too_large", f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def as_object(value: Any, allowed: Iterable[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_body", "body must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(u[:40] for u in unknown[:5])}")
    return value


async def read_object(request: Request, allowed: Iterable[str]) -> dict[str, Any]:
    return as_object(loads_strict(await read_body(request)), allowed)


def decimal_field(obj: Mapping[str, Any], name: str, *, required: bool = True) -> Decimal | None:
    """A positive, finite, bounded decimal given as a JSON number or a numeric string."""
    v = obj.get(name)
    if v is None:
        if required:
            raise ApiError(422, "missing_field", f"{name} is required")
        return None
    try:
        if isinstance(v, Decimal):
            if not v.is_finite():
                raise BadDecimal(f"{name} must be finite")
            if abs(v) > MAX_AMOUNT or len(v.as_tuple().digits) > 30:
                raise BadDecimal(f"{name} is out of range")
            d = v
        else:
            d = parse_decimal(v, field=name)
    except BadDecimal as e:
        raise ApiError(422, "invalid_number", str(e)) from None
    if d <= 0:
        raise ApiError(422, "invalid_number", f"{name} must be positive")
    return d


def str_field(obj: Mapping[str, Any], name: str, *, pattern: str | None = None, required: bool = True,
              default: str | None = None) -> str | None:
    v = obj.get(name)
    if v is None:
        if required:
            raise ApiError(422, "missing_field", f"{name} is required")
        return default
    if not isinstance(v, str):
        raise ApiError(422, "invalid_field", f"{name} must be a string")
    if pattern is not None and not re.fullmatch(pattern, v):
        raise ApiError(422, "invalid_field", f"{name} is malformed")
    return v
