"""Exact decimal helpers. Money never touches a float (strict parsing of client input: ``gateway.services.decimals.to_decimal``)."""

from __future__ import annotations

from decimal import Decimal

# Amounts beyond this are refused as absurd (also keeps Decimal contexts far from their limits).
MAX_AMOUNT = Decimal("1e15")


def fmt(d: Decimal) -> str:
    """Plain positional string, no exponent, no trailing zeros ("0.00010" -> "0.0001", "1E+2" -> "100")."""
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def is_multiple(value: Decimal, step: Decimal) -> bool:
    return value % step == 0
