"""The client WebSocket protocol, without I/O: the parsing of subscription requests.

A subscription is named by its topic (``best_touch:BTCUSDT:all``, ``ewma:SOLUSDT:all:30``): pushed data carries
it as ``topic``; replies (the subscribe ack, unsubscribe) name it ``subscription``, so that a client routing
messages by ``topic`` never mistakes a reply for data. Every refusal is a ``DomainError``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gateway.jsonio import number
from gateway.services.decimals import to_decimal
from shared.book_merge import DEPTH_DEFAULT, DEPTH_MAX
from shared.errors import DomainError
from shared.klines import INTERVALS_US
from shared.money import fmt
from shared.settings import EXCHANGES, Settings

EXCHANGE_FILTERS: tuple[str, ...] = ("all", *EXCHANGES)
MARKET_STREAMS: tuple[str, ...] = ("best_touch", "trades", "klines", "ewma", "book")
USER_STREAMS: tuple[str, ...] = ("orders",)  # the authenticated user's own data: no symbol, no exchange
HALF_LIFE_MIN = Decimal("0.001")
HALF_LIFE_MAX = Decimal(30 * 86400)


class Subscription:
    """A subscription as its connection holds it: ``close`` detaches it from its source, once."""

    __slots__ = ("_detach",)

    def __init__(self, detach: Callable[[], Awaitable[None]]) -> None:
        self._detach: Callable[[], Awaitable[None]] | None = detach

    async def close(self) -> None:
        detach, self._detach = self._detach, None
        if detach is not None:
            await detach()


@dataclass(frozen=True, slots=True)
class Spec:
    stream: str
    symbol: str
    exchange: str
    interval: str | None = None
    half_life: Decimal | None = None
    depth: int | None = None  # book

    @property
    def topic(self) -> str:
        if self.stream in USER_STREAMS:
            return self.stream
        parts = [self.stream, self.symbol, self.exchange]
        if self.interval is not None:
            parts.append(self.interval)
        if self.half_life is not None:
            parts.append(fmt(self.half_life))
        if self.depth is not None:
            parts.append(str(self.depth))
        return ":".join(parts)

    def describe(self) -> dict[str, Any]:
        """The subscription as replies name it."""
        if self.stream in USER_STREAMS:
            return {"subscription": self.topic, "stream": self.stream}
        out: dict[str, Any] = {"subscription": self.topic, "stream": self.stream, "symbol": self.symbol,
                               "exchange": self.exchange}
        if self.interval is not None:
            out["interval"] = self.interval
        if self.half_life is not None:
            out["half_life"] = number(self.half_life)
        if self.depth is not None:
            out["depth"] = self.depth
        return out


def _choice(msg: dict[str, Any], field: str, allowed: tuple[str, ...] | list[str], code: str) -> str:
    v = msg.get(field)
    if v is None:
        raise DomainError(code, f"missing {field!r}; one of {', '.join(allowed)}")
    if not isinstance(v, str) or v not in allowed:
        shown = repr(v)[:40]
        raise DomainError(code, f"unknown {field} {shown}; one of {', '.join(allowed)}")
    return v


def parse_half_life(v: Any) -> Decimal:
    if v is None:
        raise DomainError("bad_half_life", "missing 'half_life' (seconds, a positive number)")
    if isinstance(v, str) or isinstance(v, bool):
        raise DomainError("bad_half_life", "half_life must be a JSON number of seconds")
    try:
        d = to_decimal(v)
    except ValueError as e:
        raise DomainError("bad_half_life", f"half_life {e}") from None
    if d <= 0:
        raise DomainError("bad_half_life", "half_life must be positive")
    if d < HALF_LIFE_MIN or d > HALF_LIFE_MAX:
        raise DomainError("bad_half_life", f"half_life must be between {HALF_LIFE_MIN} and {HALF_LIFE_MAX} seconds")
    return d


def parse_depth(v: Any) -> int:
    if v is None:
        return DEPTH_DEFAULT
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= DEPTH_MAX:
        raise DomainError("bad_depth", f"depth must be a whole number from 1 to {DEPTH_MAX}")
    return v


def parse_spec(msg: dict[str, Any], settings: Settings, streams: tuple[str, ...] = MARKET_STREAMS) -> Spec:
    stream = _choice(msg, "stream", streams, "unknown_stream")
    if stream in USER_STREAMS:
        return Spec(stream, "", "")
    symbol = _choice(msg, "symbol", list(settings.symbols), "unknown_symbol")
    exchange = _choice(msg, "exchange", EXCHANGE_FILTERS, "unknown_exchange")
    interval = half_life = None
    if stream == "klines":
        interval = _choice(msg, "interval", tuple(INTERVALS_US), "unknown_interval")
    if stream == "ewma":
        half_life = parse_half_life(msg.get("half_life"))
    depth = parse_depth(msg.get("depth")) if stream == "book" else None
    return Spec(stream, symbol, exchange, interval, half_life, depth)


def parse_topic(topic: Any, settings: Settings) -> Spec:
    """A subscription's name (the subscribe ack's ``subscription``, the data's ``topic``) back into its ``Spec``."""
    if not isinstance(topic, str) or len(topic) > 200:
        raise DomainError("unknown_topic", "subscription must be a string returned by subscribe")
    if topic in USER_STREAMS:
        return Spec(topic, "", "")
    parts = topic.split(":")
    msg: dict[str, Any] = dict(zip(("stream", "symbol", "exchange"), parts, strict=False))
    if len(parts) == 4 and parts[0] == "klines":
        msg["interval"] = parts[3]
    elif len(parts) == 4 and parts[0] == "ewma":
        try:
            msg["half_life"] = to_decimal(parts[3])
        except ValueError:
            raise DomainError("unknown_topic", f"unknown topic {topic[:80]!r}") from None
    elif len(parts) == 4 and parts[0] == "book" and parts[3].isdigit() and parts[3].isascii():
        msg["depth"] = int(parts[3])
    elif len(parts) != 3 or parts[0] == "book":
        raise DomainError("unknown_topic", f"unknown topic {topic[:80]!r}")
    try:
        spec = parse_spec(msg, settings)
    except DomainError:
        raise DomainError("unknown_topic", f"unknown topic {topic[:80]!r}") from None
    if spec.topic != topic:
        raise DomainError("unknown_topic", f"unknown topic {topic[:80]!r}")
    return spec
