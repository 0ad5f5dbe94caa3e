"""JSON in and out of the gateway, exact both ways: what REST and the WebSocket read and write.

``dumps(obj)`` writes every ``Decimal`` as a JSON number carrying its exact digits (``21990.5595``, never
through a float; trailing zeros dropped, never an exponent): ``json.loads(text, parse_float=Decimal)`` reads
back the same value.

``loads(data)`` differs from ``json.loads`` in what it refuses and in how it reads numbers:

- numbers with a fraction or exponent become ``Decimal`` with the exact digits sent (``0.1`` stays
  ``Decimal("0.1")``; ``1e400`` is ``Decimal("1E+400")``, left for the field validators to refuse),
  integers stay ``int``;
- ``NaN``, ``Infinity``, ``-Infinity`` (which ``json.loads`` accepts) are refused;
- nesting deeper than ``MAX_DEPTH`` is refused before parsing (no ``RecursionError``);
- duplicate keys in an object (``{"asset": "USDT", "asset": "BTC"}``: which one was meant?) are refused;
- bytes that are not UTF-8, integers of thousands of digits and lone UTF-16 surrogates
  (``"\\ud800"``, which cannot be stored or re-encoded) are refused.

Every refusal is a ``BadJson`` whose text is fit for a client.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from shared.money import fmt

MAX_DEPTH = 32


class BadJson(ValueError):
    pass


def number(d: Decimal) -> orjson.Fragment:
    """``d`` as a JSON number with its exact digits, as written (``64000.10`` stays ``64000.10``)."""
    return orjson.Fragment(number_text(d))


def number_text(d: Decimal) -> bytes:
    """The JSON text of ``number(d)``."""
    if not d.is_finite():
        raise ValueError(f"not a finite number: {d}")
    s = str(d)
    if "E" in s:  # str() switches to exponent form for tiny and huge values: spell them out
        s = format(d, "f")
    return s.encode()


def amount(d: Decimal) -> orjson.Fragment:
    """``d`` as a JSON number without trailing zeros (``500.000`` -> ``500``): how balances and orders read."""
    if not d.is_finite():
        raise ValueError(f"not a finite number: {d}")
    return orjson.Fragment(fmt(d).encode())


def _amount(o: Any) -> Any:
    if isinstance(o, Decimal):
        return amount(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def _number(o: Any) -> Any:
    if isinstance(o, Decimal):
        return number(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def dumps(obj: Any, *, as_written: bool = False) -> bytes:
    """orjson, with every ``Decimal`` an exact JSON number: ``amount`` (``500.000`` -> ``500``), or with
    ``as_written`` the digits as they are (``number``: a configured ``0.0010`` stays ``0.0010``)."""
    return orjson.dumps(obj, default=_number if as_written else _amount)


def _constant(name: str) -> Any:
    raise BadJson(f"{name} is not valid JSON (numbers must be finite)")


def _depth(text: str) -> int:
    """Deepest nesting of arrays/objects outside strings."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = ""
        for k, _ in pairs:
            if k in seen:
                dup = k
                break
            seen.add(k)
        raise BadJson(f"invalid JSON: duplicate key {dup[:40]!r}")
    return obj


def _check_strings(obj: Any) -> None:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, str):
            o.encode("utf-8")  # raises on lone surrogates
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)


def loads(data: bytes | str) -> Any:
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise BadJson("body is not UTF-8 text") from None
    else:
        text = data
    # Cheap test first: only bracket-heavy documents pay for the depth scan.
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise BadJson(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(text, parse_float=Decimal, parse_constant=_constant, object_pairs_hook=_object)
    except BadJson:
        raise
    except json.JSONDecodeError as e:
        raise BadJson(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise BadJson(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # e.g. an integer beyond Python's digit limit
        raise BadJson(f"invalid JSON: {str(e)[:120]}") from None
    if "\\u" in text:
        try:
            _check_strings(obj)
        except UnicodeEncodeError:
            raise BadJson("invalid JSON: lone UTF-16 surrogate in a string") from None
    return obj
