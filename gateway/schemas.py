"""Reusable request/response building blocks for every REST route (and the WebSocket's order actions).

Exact decimals
--------------
``Dec``, ``PositiveDec`` and ``NonNegativeDec`` are pydantic types (``Annotated[Decimal, ...]``)::

    from gateway.schemas import PositiveDec, StrictModel

    class DepositIn(StrictModel):
        asset: str
        amount: PositiveDec

They accept a JSON number (``10.5``) or a numeric string (``"10.5"``), keep the exact digits sent, and
refuse with a readable 422 message: booleans, ``null``, non-numeric or oddly written strings (``"1_000"``,
``"0x10"``, ``" "``, non-ASCII digits, padding other than JSON's blanks: ``"\\u00a05"``), ``NaN``/``Infinity`` in any spelling, values of magnitude
``>= 1e15`` (``MAX_ABS``), more than ``MAX_PLACES`` (18) decimal places, more than ``MAX_DIGITS`` (28)
significant digits. Trailing zeros are kept (``"1.50"`` stays ``Decimal("1.50")``); quantize to a tick or
a lot step yourself. ``decimal_type(gt=..., ge=..., le=..., max_places=...)`` builds other variants.

In responses these types serialise to JSON *strings* with every digit (``"0.00010"``), never floats;
that is the rule for every decimal the API returns.

Exactness needs the body parsed by ``gateway.strict_json`` (numbers with a fraction arrive as
``Decimal``): the ``BodyLimitMiddleware`` does that for every JSON request and ``JsonRoute`` hands the
result to FastAPI. Declare routers with ``api_router(...)`` (an ``APIRouter`` whose ``route_class`` is
``JsonRoute``). A route on a plain ``APIRouter`` still gets every refusal above, but a JSON number with
more than 15 significant digits may reach it already rounded by a float.

Models
------
``StrictModel`` is the base for request bodies: unknown fields are a 422 (``extra="forbid"``).

Stable error codes
------------------
By default every refusal of a body is code ``validation_error``. ``coded("invalid_side", T)`` is ``T``
whose every refusal carries the code ``invalid_side`` instead, and ``CodedModel`` (a ``StrictModel``)
gives a body's shape errors codes of their own: ``invalid_body`` (not a JSON object), ``unknown_field``,
``missing_field`` (``null`` counts as absent). The trading routes and the WebSocket's order actions use
them, so one model gives REST and WebSocket the same codes::

    class DepositIn(CodedModel):
        asset: coded("invalid_field", str)
        amount: coded("invalid_number", PositiveDec)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, params
from fastapi.routing import APIRoute
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response

from gateway import strict_json
from gateway.errors import ApiError, register_codes
from shared.money import MAX_AMOUNT

MAX_ABS = MAX_AMOUNT
MAX_PLACES = 18
MAX_DIGITS = 28  # the default Decimal context precision: one value never rounds
SCOPE_JSON_KEY = "sr.json_body"

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
# The strings of _NUMBER whose value is > 0 (a non-zero digit, no minus), for the OpenAPI document.
_POSITIVE = re.compile(r"\+?(?:[0-9]*[1-9][0-9]*(?:\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)(?:[eE][+-]?[0-9]{1,4})?")
MAX_NUMBER_CHARS = 64
_BLANKS = " \t\n\r"


def to_decimal(v: Any) -> Decimal:
    """Strict, exact conversion of a JSON value to a finite, bounded Decimal (``ValueError`` otherwise)."""
    if isinstance(v, bool) or v is None:
        raise ValueError("must be a number")
    if isinstance(v, Decimal):
        d = v
    elif isinstance(v, int):
        if abs(v) >= MAX_ABS:
            raise ValueError(f"must be less than {MAX_ABS:f} in magnitude")
        d = Decimal(v)
    elif isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        d = Decimal(repr(v))
    elif isinstance(v, str):
        # JSON's own whitespace around the number only (str.strip() would also take NBSP, U+2003, U+001C...),
        # and the length before stripping: what the OpenAPI pattern and maxLength say.
        s = v.strip(_BLANKS)
        if len(v) > MAX_NUMBER_CHARS or not _NUMBER.fullmatch(s):
            raise ValueError('must be a decimal number such as 12.5 or "12.5"')
        d = Decimal(s)
    else:
        raise ValueError("must be a number")
    if not d.is_finite():
        raise ValueError("must be a finite number")
    if not d:
        return Decimal(0)  # "0E-400" and "-0.00" alike
    if d.adjusted() >= MAX_ABS.adjusted():
        raise ValueError(f"must be less than {MAX_ABS:f} in magnitude")
    if decimal_places(d) > MAX_PLACES:
        raise ValueError(f"must have at most {MAX_PLACES} decimal places")
    if _significant_digits(d) > MAX_DIGITS:
        raise ValueError(f"must have at most {MAX_DIGITS} significant digits")
    return d


def _trimmed(d: Decimal) -> tuple[tuple[int, ...], int]:
    """Digits and exponent without trailing zeros, computed without a context (so nothing rounds)."""
    _, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    n = len(digits)
    while n > 1 and digits[n - 1] == 0:
        n -= 1
        exp += 1
    return digits[:n], exp


def decimal_places(d: Decimal) -> int:
    """Places after the point that matter: ``1.500`` has 1, ``100`` has 0."""
    if not d:
        return 0
    return max(0, -_trimmed(d)[1])


def _significant_digits(d: Decimal) -> int:
    digits, _ = _trimmed(d)
    i = 0
    while i < len(digits) - 1 and digits[i] == 0:
        i += 1
    return len(digits) - i


def to_json_string(d: Decimal) -> str:
    """Exact positional form: every digit kept, never an exponent (``Decimal("1E+2")`` -> ``"100"``)."""
    return format(d, "f")


def decimal_type(*, gt: Decimal | int | None = None, ge: Decimal | int | None = None,
                 le: Decimal | int | None = None, max_places: int = MAX_PLACES,
                 description: str = "decimal number: JSON number or numeric string") -> Any:
    def bounds(d: Decimal) -> Decimal:
        if gt is not None and not d > gt:
            raise ValueError(f"must be greater than {gt}")
        if ge is not None and not d >= ge:
            raise ValueError(f"must be at least {ge}")
        if le is not None and not d <= le:
            raise ValueError(f"must be at most {le}")
        if decimal_places(d) > max_places:
            raise ValueError(f"must have at most {max_places} decimal places")
        return d

    number: dict[str, Any] = {"type": "number", "exclusiveMaximum": float(MAX_ABS)}
    pattern = _NUMBER.pattern
    if gt is not None:
        number["exclusiveMinimum"] = float(gt)
        if gt == 0:
            pattern = _POSITIVE.pattern
    elif ge is not None:
        number["minimum"] = float(ge)
    else:
        number["exclusiveMinimum"] = -float(MAX_ABS)
    schema_in: dict[str, Any] = {
        # Anchored: a JSON Schema pattern matches anywhere in the string unless it says otherwise.
        "anyOf": [number, {"type": "string", "maxLength": MAX_NUMBER_CHARS,
                           "pattern": f"^[ \\t\\n\\r]*{pattern}[ \\t\\n\\r]*$"}],
        "description": description,
        "examples": ["0.01"],
    }
    return Annotated[
        Decimal,
        BeforeValidator(to_decimal),
        AfterValidator(bounds),
        PlainSerializer(to_json_string, return_type=str, when_used="json"),
        WithJsonSchema(schema_in, mode="validation"),
        WithJsonSchema({"type": "string", "description": "exact decimal as a string", "examples": ["0.01"]},
                       mode="serialization"),
    ]


Dec = decimal_type()
PositiveDec = decimal_type(gt=0, description="positive decimal: JSON number or numeric string")
NonNegativeDec = decimal_type(ge=0, description="decimal >= 0: JSON number or numeric string")


class StrictModel(BaseModel):
    """Base of request bodies: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


def _reason(e: ValidationError) -> str:
    msg = str(e.errors()[0].get("msg", "invalid value"))
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def coded(code: str, tp: Any) -> Any:
    """``tp`` whose every refusal carries the stable error code ``code`` (the response's ``code``)."""
    register_codes(code)

    def wrap(v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(v)
        except ValidationError as e:
            raise PydanticCustomError(code, "{reason}", {"reason": _reason(e)}) from None

    return Annotated[tp, WrapValidator(wrap)]


register_codes("invalid_body", "unknown_field", "missing_field")


class CodedModel(StrictModel):
    """A request body whose shape errors have codes: ``invalid_body``, ``unknown_field``, ``missing_field``.

    A ``null`` value counts as an absent field."""

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise PydanticCustomError("invalid_body", "body must be a JSON object")
        fields = cls.model_fields
        unknown = [str(k)[:40] for k in data if k not in fields]
        if unknown:
            raise PydanticCustomError("unknown_field", "unknown field(s): {fields}",
                                      {"fields": ", ".join(sorted(unknown)[:5])})
        missing = [n for n, f in fields.items() if f.is_required() and data.get(n) is None]
        if missing:
            raise PydanticCustomError("missing_field", "{fields} required", {"fields": ", ".join(missing)})
        return {k: v for k, v in data.items() if v is not None}


class OutModel(BaseModel):
    """Base of response bodies."""

    model_config = ConfigDict(extra="ignore")


def is_json_content_type(value: str) -> bool:
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def is_form_content_type(value: str) -> bool:
    media = value.split(";", 1)[0].strip().lower()
    return media in ("application/x-www-form-urlencoded", "multipart/form-data")


class JsonRequest(Request):
    """A request whose ``json()`` is the strict, Decimal-keeping parse (done once, by the middleware)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            if SCOPE_JSON_KEY in self.scope:
                self._json = self.scope[SCOPE_JSON_KEY]
            else:
                self._json = strict_json.loads(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """An ``APIRoute`` reading JSON bodies with ``gateway.strict_json`` and refusing other body types (415)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        wants_json = self.body_field is not None and not isinstance(self.body_field.field_info, params.Form)

        async def route_handler(request: Request) -> Response:
            req = JsonRequest(request.scope, request.receive)
            if wants_json:
                ctype = req.headers.get("content-type", "")
                if not is_json_content_type(ctype) and await req.body():
                    raise ApiError(415, "unsupported_media_type",
                                   f"send the body as application/json (got {ctype[:60] or 'no content type'})")
            return await handler(req)

        return route_handler


def api_router(**kw: Any) -> APIRouter:
    """An ``APIRouter`` whose routes parse JSON strictly and exactly (see the module docstring)."""
    return APIRouter(route_class=JsonRoute, **kw)


class JsonOut(Response):
    """JSON rendered by orjson from plain, JSON-ready dicts (decimals already strings).

    Routes return it directly for speed and declare ``response_model=`` for the documentation."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
