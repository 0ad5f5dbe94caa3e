"""Exact decimal fields for request and response models, the same on REST and the WebSocket.

``Dec``, ``PositiveDec`` and ``NonNegativeDec`` are pydantic types (``Annotated[Decimal, ...]``). They accept
a JSON number (``10.5``) or a numeric string (``"10.5"``), keep the exact digits sent, and refuse with a
readable message: booleans, ``null``, non-numeric or oddly written strings (``"1_000"``, ``"0x10"``, ``" "``,
non-ASCII digits, padding other than JSON's blanks: ``"\\u00a05"``), ``NaN``/``Infinity`` in any spelling,
values of magnitude ``>= 1e15`` (``MAX_ABS``), more than ``MAX_PLACES`` (18) decimal places, more than
``MAX_DIGITS`` (28) significant digits. Trailing zeros are kept (``"1.50"`` stays ``Decimal("1.50")``).
``decimal_type(gt=..., ge=..., le=..., max_places=...)`` builds other variants.

Exactness on input needs the body parsed by ``gateway.jsonio.loads`` (numbers with a fraction arrive as
``Decimal``), which both transports do. On output every decimal is an exact JSON *number*
(``gateway.jsonio.dumps``); the OpenAPI document says ``type: number`` and that the digits are exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from shared.money import MAX_AMOUNT

MAX_ABS = MAX_AMOUNT
MAX_PLACES = 18
MAX_DIGITS = 28  # the default Decimal context precision: one value never rounds

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
# The strings of _NUMBER whose value is > 0 (a non-zero digit, no minus), for the OpenAPI document.
_POSITIVE = re.compile(r"\+?(?:[0-9]*[1-9][0-9]*(?:\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)(?:[eE][+-]?[0-9]{1,4})?")
MAX_NUMBER_CHARS = 64
_BLANKS = " \t\n\r"
EXACT_NOTE = ("exact decimal: the number's digits are exact; read it with json.loads(..., parse_float=Decimal) "
              "(or the SDK) to keep them")
SCHEMA_OUT: dict[str, Any] = {"type": "number", "description": EXACT_NOTE, "examples": [0.01]}


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


@dataclass(frozen=True, slots=True)
class ExactDecimal:
    """Pydantic metadata for ``Annotated[Decimal, ExactDecimal(...)]``: the strict, exact parse (``to_decimal``),
    the bounds, and both JSON schemas (input: number or numeric string; output: an exact number)."""

    gt: Decimal | int | None = None
    ge: Decimal | int | None = None
    le: Decimal | int | None = None
    max_places: int = MAX_PLACES
    description: str = "decimal number: JSON number or numeric string"

    def bounds(self, d: Decimal) -> Decimal:
        if self.gt is not None and not d > self.gt:
            raise ValueError(f"must be greater than {self.gt}")
        if self.ge is not None and not d >= self.ge:
            raise ValueError(f"must be at least {self.ge}")
        if self.le is not None and not d <= self.le:
            raise ValueError(f"must be at most {self.le}")
        if decimal_places(d) > self.max_places:
            raise ValueError(f"must have at most {self.max_places} decimal places")
        return d

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        exact = core_schema.no_info_after_validator_function(self.bounds, handler(source))
        return core_schema.no_info_before_validator_function(to_decimal, exact)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        if handler.mode == "serialization":
            return dict(SCHEMA_OUT)
        number: dict[str, Any] = {"type": "number", "exclusiveMaximum": float(MAX_ABS)}
        pattern = _NUMBER.pattern
        if self.gt is not None:
            number["exclusiveMinimum"] = float(self.gt)
            if self.gt == 0:
                pattern = _POSITIVE.pattern
        elif self.ge is not None:
            number["minimum"] = float(self.ge)
        else:
            number["exclusiveMinimum"] = -float(MAX_ABS)
        return {
            # Anchored: a JSON Schema pattern matches anywhere in the string unless it says otherwise.
            "anyOf": [number, {"type": "string", "maxLength": MAX_NUMBER_CHARS,
                               "pattern": f"^[ \\t\\n\\r]*{pattern}[ \\t\\n\\r]*$"}],
            "description": self.description,
            "examples": ["0.01"],
        }


def decimal_type(**rules: Any) -> Any:
    """``Annotated[Decimal, ExactDecimal(**rules)]``, for variants made at run time."""
    return Annotated[Decimal, ExactDecimal(**rules)]


Dec = Annotated[Decimal, ExactDecimal()]
PositiveDec = Annotated[Decimal, ExactDecimal(gt=0, description="positive decimal: JSON number or numeric string")]
NonNegativeDec = Annotated[Decimal, ExactDecimal(ge=0, description="decimal >= 0: JSON number or numeric string")]
