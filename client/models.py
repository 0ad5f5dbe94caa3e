"""Typed views of the API's JSON, without I/O. Every price, size and amount is a ``Decimal``.

The gateway sends every decimal as a JSON number with the exact digits (older servers sent REST decimals as
strings); ``loads`` parses both without going through a float. Each object keeps the JSON it came from in ``raw``,
so a field added by a newer server is still reachable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

Json = dict[str, Any]


def loads(text: str | bytes) -> Any:
    """JSON with every non-integer number as an exact ``Decimal``."""
    return json.loads(text, parse_float=Decimal)


def dumps(o: Any) -> str:
    """JSON with decimals sent as strings (the API accepts numeric strings everywhere it takes a decimal)."""
    return json.dumps(o, default=_default, separators=(",", ":"))


def _default(o: Any) -> Any:
    if isinstance(o, Decimal):
        return decimal_str(o)
    raise TypeError(f"cannot send {type(o).__name__} as JSON")


def decimal_str(d: Decimal | int | str) -> str:
    """``Decimal('1E-8')`` as ``'0.00000001'``: the server reads plain decimal notation."""
    d = Decimal(d) if not isinstance(d, Decimal) else d
    if not d.is_finite():
        raise ValueError(f"not a finite decimal: {d}")
    s = str(d)
    return format(d, "f") if "E" in s or "e" in s else s


def dec(v: Any) -> Decimal:
    if isinstance(v, Decimal):
        return v
    if isinstance(v, bool) or v is None:
        raise ValueError(f"expected a decimal, got {v!r}")
    if isinstance(v, int | str):
        return Decimal(v)
    raise ValueError(f"expected a decimal, got {type(v).__name__}")


def opt_dec(v: Any) -> Decimal | None:
    return None if v is None else dec(v)


def dec_map(o: Any) -> dict[str, Decimal]:
    return {k: dec(v) for k, v in (o or {}).items()}


# -- REST ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    created_us: int

    @classmethod
    def from_json(cls, o: Json) -> User:
        return cls(o["id"], o["username"], int(o["created_us"]))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as ``GET /api-keys`` lists it; ``key`` (the secret itself) only in the answer that made it."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_us: int
    expires_us: int | None
    last_used_us: int | None
    key: str | None = None

    @classmethod
    def from_json(cls, o: Json) -> ApiKey:
        return cls(o["id"], o["name"], tuple(o["scopes"]), int(o["created_us"]),
                   None if o.get("expires_us") is None else int(o["expires_us"]),
                   None if o.get("last_used_us") is None else int(o["last_used_us"]), o.get("key"))


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    lot_step: Decimal
    min_notional: Decimal
    maker_fee: Decimal
    taker_fee: Decimal
    exchanges: dict[str, str]

    @classmethod
    def from_json(cls, o: Json) -> SymbolInfo:
        return cls(o["symbol"], o["base"], o["quote"], dec(o["tick_size"]), dec(o["lot_step"]),
                   dec(o["min_notional"]), dec(o["maker_fee"]), dec(o["taker_fee"]), dict(o.get("exchanges", {})))


@dataclass(frozen=True, slots=True)
class Info:
    assets: list[str]
    pairs: list[str]
    symbols: dict[str, SymbolInfo]

    @classmethod
    def from_json(cls, o: Json) -> Info:
        syms = [SymbolInfo.from_json(s) for s in o.get("symbols", [])]
        return cls(list(o["assets"]), list(o["pairs"]), {s.symbol: s for s in syms})


@dataclass(frozen=True, slots=True)
class Balance:
    total: dict[str, Decimal]
    available: dict[str, Decimal]
    reserved: dict[str, Decimal]

    @classmethod
    def from_json(cls, o: Json) -> Balance:
        return cls(dec_map(o.get("total")), dec_map(o.get("available")), dec_map(o.get("reserved")))


@dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str
    token_id: str
    symbol: str
    side: str
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_asset: str
    exchange: str
    liquidity: str
    ts_us: int

    @classmethod
    def from_json(cls, o: Json) -> Fill:
        return cls(o["fill_id"], o["token_id"], o["symbol"], o["side"], dec(o["price"]), dec(o["quantity"]),
                   dec(o["fee"]), o["fee_asset"], o["exchange"], o["liquidity"], int(o["ts_us"]))


FINAL_STATUSES = frozenset({"filled", "cancelled", "expired", "rejected"})


@dataclass(frozen=True, slots=True)
class Order:
    token_id: str
    symbol: str
    side: str
    type: str
    price: Decimal | None
    quantity: Decimal
    status: str
    filled_quantity: Decimal
    filled_notional: Decimal
    average_price: Decimal | None
    fee: Decimal
    fee_asset: str
    reserve_asset: str
    reserved: Decimal
    exchanges: list[str]
    created_us: int
    updated_us: int
    version: int
    reason: str
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def from_json(cls, o: Json) -> Order:
        return cls(
            token_id=o["token_id"], symbol=o["symbol"], side=o["side"], type=o.get("type", "limit"),
            price=opt_dec(o.get("price")), quantity=dec(o["quantity"]), status=o["status"],
            filled_quantity=dec(o.get("filled_quantity", 0)), filled_notional=dec(o.get("filled_notional", 0)),
            average_price=opt_dec(o.get("average_price")), fee=dec(o.get("fee", 0)),
            fee_asset=o.get("fee_asset", ""), reserve_asset=o.get("reserve_asset", ""),
            reserved=dec(o.get("reserved", 0)), exchanges=list(o.get("exchanges", [])),
            created_us=int(o.get("created_us", 0)), updated_us=int(o.get("updated_us", 0)),
            version=int(o.get("version", 0)), reason=o.get("reason", ""), raw=o,
        )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of ``GET /orders`` (``items`` are ``Order``) or ``GET /fills`` (``Fill``)."""

    items: list[Any]
    total: int
    limit: int
    offset: int


# -- WebSocket pushes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BestTouch:
    topic: str
    symbol: str
    exchange: str
    bid_px: Decimal | None
    bid_sz: Decimal | None
    bid_exchange: str | None
    bid_exchanges: list[str]
    ask_px: Decimal | None
    ask_sz: Decimal | None
    ask_exchange: str | None
    ask_exchanges: list[str]
    live: list[str]
    crossed: bool
    ts_event_us: int
    ts_recv_us: int
    snapshot: bool = False
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_push(cls, msg: Json) -> BestTouch:
        d = msg["data"]
        return cls(msg.get("topic", ""), d["symbol"], d["exchange"], opt_dec(d.get("bid_px")),
                   opt_dec(d.get("bid_sz")), d.get("bid_exchange"), list(d.get("bid_exchanges") or []),
                   opt_dec(d.get("ask_px")), opt_dec(d.get("ask_sz")), d.get("ask_exchange"),
                   list(d.get("ask_exchanges") or []), list(d.get("live") or []), bool(d.get("crossed")),
                   int(d.get("ts_event_us") or 0), int(d.get("ts_recv_us") or 0), bool(msg.get("snapshot")), msg)


@dataclass(frozen=True, slots=True)
class Trade:
    topic: str
    symbol: str
    exchange: str
    trade_id: str
    price: Decimal
    size: Decimal
    side: str
    ts_event_us: int
    ts_recv_us: int
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_push(cls, msg: Json) -> Trade:
        d = msg["data"]
        return cls(msg.get("topic", ""), d["symbol"], d["exchange"], str(d["trade_id"]), dec(d["price"]),
                   dec(d["size"]), d["side"], int(d["ts_event_us"]), int(d["ts_recv_us"]), msg)


@dataclass(frozen=True, slots=True)
class Kline:
    topic: str
    symbol: str
    exchange: str
    interval: str
    open_time_us: int
    close_time_us: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int
    closed: bool
    history: bool
    ts_event_us: int
    ts_recv_us: int
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_push(cls, msg: Json) -> Kline:
        d = msg["data"]
        return cls(msg.get("topic", ""), d["symbol"], d["exchange"], d["interval"], int(d["open_time_us"]),
                   int(d["close_time_us"]), dec(d["open"]), dec(d["high"]), dec(d["low"]), dec(d["close"]),
                   dec(d["volume"]), int(d["trades"]), bool(d["closed"]), bool(d.get("history")),
                   int(d.get("ts_event_us") or 0), int(d.get("ts_recv_us") or 0), msg)


@dataclass(frozen=True, slots=True)
class Ewma:
    topic: str
    symbol: str
    exchange: str
    half_life: Decimal
    value: Decimal
    price: Decimal
    ts_event_us: int
    ts_recv_us: int
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_push(cls, msg: Json) -> Ewma:
        d = msg["data"]
        return cls(msg.get("topic", ""), d["symbol"], d["exchange"], dec(d["half_life"]), dec(d["value"]),
                   dec(d["price"]), int(d["ts_event_us"]), int(d["ts_recv_us"]), msg)


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """``event`` is accepted, modified, cancelled, filled, expired or rejected."""

    topic: str
    event: str
    order: Order
    fills: list[Fill]
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_push(cls, msg: Json) -> OrderEvent:
        d = msg.get("data", msg)
        return cls(msg.get("topic", ""), d["event"], Order.from_json(d["order"]),
                   [Fill.from_json(f) for f in d.get("fills") or []], msg)


@dataclass(frozen=True, slots=True)
class Resync:
    """On the ``orders`` stream: the gateway lost its Redis subscription for a moment, so events may have been
    missed. Re-read the open orders and the balance (``list_orders(status="open")``, ``balance()``)."""

    topic: str
    reason: str
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_push(cls, msg: Json) -> Resync:
        return cls(msg.get("topic", ""), str((msg.get("data") or {}).get("reason", "")), msg)


@dataclass(frozen=True, slots=True)
class Message:
    """A push of a type this client does not know yet."""

    type: str
    topic: str
    data: Any
    raw: Json = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class BookLevel:
    price: Decimal
    size: Decimal  # over the exchanges
    sizes: dict[str, Decimal]  # exchange -> its size at this price


@dataclass(frozen=True, slots=True)
class Book:
    """The ``book`` stream: one exchange's top levels, or both merged by price (``exchange`` ``all``)."""

    topic: str
    symbol: str
    exchange: str
    depth: int
    bids: list[BookLevel]  # best (highest) first
    asks: list[BookLevel]  # best (lowest) first
    live: list[str]
    crossed: bool
    ts_event_us: int
    ts_recv_us: int
    snapshot: bool = False
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_push(cls, msg: Json) -> Book:
        d = msg["data"]

        def side(levels: Any) -> list[BookLevel]:
            return [BookLevel(dec(lv["price"]), dec(lv["size"]), dec_map(lv.get("sizes") or {}))
                    for lv in levels or []]
        return cls(msg.get("topic", ""), d["symbol"], d["exchange"], int(d.get("depth") or 0), side(d.get("bids")),
                   side(d.get("asks")), list(d.get("live") or []), bool(d.get("crossed")),
                   int(d.get("ts_event_us") or 0), int(d.get("ts_recv_us") or 0), bool(msg.get("snapshot")), msg)


StreamMessage = BestTouch | Trade | Kline | Ewma | Book | OrderEvent | Resync | Message

_PARSERS: dict[str, Callable[[Json], StreamMessage]] = {"best_touch": BestTouch.from_push, "trades": Trade.from_push, "klines": Kline.from_push,
                            "ewma": Ewma.from_push, "book": Book.from_push, "order": OrderEvent.from_push, "orders": OrderEvent.from_push,
                            "resync": Resync.from_push}


def parse_push(msg: Json) -> StreamMessage:
    parse = _PARSERS.get(msg.get("type", ""))
    if parse is None:
        return Message(str(msg.get("type")), str(msg.get("topic", "")), msg.get("data"), msg)
    return parse(msg)
