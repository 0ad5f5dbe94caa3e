"""Exact decimal helpers. Money never touches a float."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

# Amounts beyond this are refused as absurd (also keeps Decimal contexts far from their limits).
MAX_AMOUNT = Decimal("1e15")
MAX_DIGITS = 30


class BadDecimal(ValueError):
    pass


def parse_decimal(v: Any, *, field: str = "value") -> Decimal:
    """Strict parse of a JSON number or numeric string into a finite Decimal."""
    if isinstance(v, bool) or v is None:
        raise BadDecimal(f"{field} must be a number")
    if isinstance(v, float):
        # JSON numbers parsed as float: go through repr so 0.1 stays 0.1.
        v = repr(v)
    elif isinstance(v, int):
        v = str(v)
    if not isinstance(v, str) or not v or len(v) > 64:
        raise BadDecimal(f"{field} must be a number")
    try:
        d = Decimal(v.strip())
    except InvalidOperation:
        raise BadDecimal(f"{field} is not a number: {v[:40]!r}") from None
    if not d.is_finite():
        raise BadDecimal(f"{field} must be finite")
    if abs(d) > MAX_AMOUNT or len(d.as_tuple().digits) > MAX_DIGITS:
        raise BadDecimal(f"{field} is out of range")
    return d


def fmt(d: Decimal) -> str:
    """Plain positional string, no exponent, no trailing zeros ("0.00010" -> "0.0001", "1E+2" -> "100")."""
    if d == 0:
        return "0"
    s = format(d.normalize(), "f")
    return s


def is_multiple(value: Decimal, step: Decimal) -> bool:
    return value % step == 0
