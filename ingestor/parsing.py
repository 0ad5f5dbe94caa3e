"""What the exchange parsers share: the result types and strict, fast field checks.

A parser turns one raw frame into either a list of normalized messages (possibly empty) or a
``Control`` event for the connection, and raises ``FrameError`` for anything it cannot trust.
Everything here is pure: no I/O, no clock (the receive time is passed in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import orjson

from shared.money import MAX_AMOUNT
from shared.schema import BBO, Book, Level, Trade

MdMessage = BBO | Book | Trade
ControlKind = Literal["reconnect", "pong", "subscribed", "error", "info"]

# Exceptions that mean "the frame is not shaped as documented"; parsers let them fly and each ``parse``
# turns them into one FrameError, so the happy path pays for no checks twice.
MALFORMED = (KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError)


class FrameError(ValueError):
    """A frame that must not reach consumers. ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Control:
    """A frame that is about the connection, not the market.

    ``reconnect``: the exchange asked us to redial (Binance serverShutdown, OKX notice 64008).
    ``error``: the exchange refused something we sent (counted and logged, no redial).
    """

    kind: ControlKind
    detail: str = ""


ParseResult = list[MdMessage] | Control

_ZERO = Decimal(0)
# Exchanges send plain decimal strings ("64000.10"). Anything else (exponents such as "1E-999999", which
# would print as a million digits, "1_000", " 1", non-ASCII digits, 400-digit strings) is refused.
_PLAIN_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?", re.ASCII)
# Timestamps after 2100-01-01 are absurd (and in microseconds would overflow a 64-bit integer on the wire).
MAX_TS_MS = 4_102_444_800_000
MAX_TRADE_ID = 64


def load_object(frame: str | bytes) -> dict[str, Any]:
    """A frame's JSON object."""
    try:
        o = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise FrameError("bad_json", repr(frame[:60])) from None
    if type(o) is not dict:
        raise FrameError("bad_json", "not an object")
    return o


# Strings already accepted, and their Decimal (immutable, so shared): a feed repeats the same prices again and
# again (in the captures ~1,300 distinct prices and ~14,000 sizes per 20,000 frames), and a dict lookup costs a
# tenth of the pattern match, the Decimal and the bounds. Each is emptied when it reaches CACHE_MAX entries.
CACHE_MAX = 8192
_PRICES: dict[str, Decimal] = {}
_SIZES: dict[str, Decimal] = {}


def price(v: Any) -> Decimal:
    if type(v) is str:
        d = _PRICES.get(v)
        if d is not None:
            return d
    if type(v) is not str or _PLAIN_DECIMAL.fullmatch(v) is None:
        raise FrameError("bad_number", f"price is not a plain decimal string: {v!r:.40}")
    d = Decimal(v)  # finite: the pattern has no exponent, NaN or Infinity
    if d <= _ZERO or d > MAX_AMOUNT:
        raise FrameError("bad_number", f"absurd price {v!r:.40}")
    if len(_PRICES) >= CACHE_MAX:
        _PRICES.clear()
    _PRICES[v] = d
    return d


def size(v: Any) -> Decimal:
    if type(v) is str:
        d = _SIZES.get(v)
        if d is not None:
            return d
    if type(v) is not str or _PLAIN_DECIMAL.fullmatch(v) is None:
        raise FrameError("bad_number", f"size is not a plain decimal string: {v!r:.40}")
    d = Decimal(v)
    if d < _ZERO or d > MAX_AMOUNT:
        raise FrameError("bad_number", f"absurd size {v!r:.40}")
    if len(_SIZES) >= CACHE_MAX:
        _SIZES.clear()
    _SIZES[v] = d
    return d


def trade_size(v: Any) -> Decimal:
    d = size(v)
    if d == _ZERO:
        raise FrameError("bad_number", "zero trade size")
    return d


def integer(v: Any) -> int:
    """An exchange id or sequence number sent as a JSON number."""
    if type(v) is not int or v < 0:
        raise FrameError("bad_field", f"expected a non-negative integer, got {v!r:.40}")
    return v


def ms_to_us(v: Any) -> int:
    """Exchange milliseconds (a JSON number on Binance, a digit string on OKX) -> microseconds."""
    if type(v) is str:
        if not (v.isascii() and v.isdigit()) or len(v) > 20:
            raise FrameError("bad_field", f"bad timestamp {v!r:.40}")
        ms = int(v)
    elif type(v) is int:
        ms = v
    else:
        raise FrameError("bad_field", f"bad timestamp {v!r:.40}")
    if ms <= 0 or ms > MAX_TS_MS:
        raise FrameError("bad_field", f"bad timestamp {ms!r:.40}")
    return ms * 1000


def trade_id(v: Any) -> str:
    """A trade id as a short printable ASCII string (OKX sends a string, Binance a number)."""
    if type(v) is not str or not v or len(v) > MAX_TRADE_ID or not (v.isascii() and v.isprintable()):
        raise FrameError("bad_field", f"tradeId {v!r:.30}")
    return v


def levels(raw: Any, descending: bool) -> tuple[Level, ...]:
    """[[price, size, ...], ...] -> ((Decimal, Decimal), ...), checked for order (best level first)."""
    if type(raw) is not list:
        raise FrameError("bad_field", "levels are not a list")
    out = tuple((price(lv[0]), size(lv[1])) for lv in raw)
    prev: Decimal | None = None
    for px, _ in out:
        if prev is not None and (px >= prev if descending else px <= prev):
            raise FrameError("unsorted", "book levels out of order")
        prev = px
    return out


def check_not_crossed(bid: Decimal, ask: Decimal) -> None:
    # A crossed book within one exchange's frame (normal on OKX in pre-open) is not tradable: dropped.
    if bid >= ask:
        raise FrameError("crossed", f"bid {bid} >= ask {ask}")


def book_sides(d: dict[str, Any]) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
    """A depth payload's ``bids`` and ``asks``, checked for order and for a crossed top."""
    bids, asks = levels(d["bids"], True), levels(d["asks"], False)
    if bids and asks:
        check_not_crossed(bids[0][0], asks[0][0])
    return bids, asks
