"""The one message schema for everything that crosses Redis.

Messages are frozen dataclasses; prices and sizes are ``Decimal`` in Python and decimal *strings* on
the wire, so no digit is lost between an exchange and a client. Times are integer microseconds since
the Unix epoch: ``ts_event_us`` is the exchange's own time, ``ts_recv_us`` when our ingestor read the frame.

Wire form (``encode``/``decode``) is a JSON object with a ``type`` field:

    {"type":"bbo","exchange":"binance","symbol":"BTCUSDT","bid_px":"64000.1","bid_sz":"1.2",
     "ask_px":"64000.2","ask_sz":"0.5","seq":123,"ts_event_us":...,"ts_recv_us":...}
    {"type":"book","exchange":"okx","symbol":"BTCUSDT","bids":[["64000.1","1.2"],...],"asks":[...],...}
    {"type":"trade","exchange":"okx","symbol":"BTCUSDT","trade_id":"130639474","price":"64000.1",
     "size":"0.01","side":"buy","ts_event_us":...,"ts_recv_us":...}
    {"type":"status","exchange":"okx","state":"down","reason":"...","ts_us":...}

``side`` of a trade is the taker's side.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import orjson

Side = Literal["buy", "sell"]
FeedState = Literal["up", "stale", "down"]
Level = tuple[Decimal, Decimal]


class SchemaError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BBO:
    exchange: str
    symbol: str
    bid_px: Decimal
    bid_sz: Decimal
    ask_px: Decimal
    ask_sz: Decimal
    seq: int
    ts_event_us: int
    ts_recv_us: int
    type: Literal["bbo"] = "bbo"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "bbo",
            "exchange": self.exchange,
            "symbol": self.symbol,
            "bid_px": str(self.bid_px),
            "bid_sz": str(self.bid_sz),
            "ask_px": str(self.ask_px),
            "ask_sz": str(self.ask_sz),
            "seq": self.seq,
            "ts_event_us": self.ts_event_us,
            "ts_recv_us": self.ts_recv_us,
        }


@dataclass(frozen=True, slots=True)
class Book:
    exchange: str
    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    seq: int
    ts_event_us: int
    ts_recv_us: int
    type: Literal["book"] = "book"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "book",
            "exchange": self.exchange,
            "symbol": self.symbol,
            "bids": [[str(p), str(s)] for p, s in self.bids],
            "asks": [[str(p), str(s)] for p, s in self.asks],
            "seq": self.seq,
            "ts_event_us": self.ts_event_us,
            "ts_recv_us": self.ts_recv_us,
        }


@dataclass(frozen=True, slots=True)
class Trade:
    exchange: str
    symbol: str
    trade_id: str
    price: Decimal
    size: Decimal
    side: Side
    ts_event_us: int
    ts_recv_us: int
    type: Literal["trade"] = "trade"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "trade",
            "exchange": self.exchange,
            "symbol": self.symbol,
            "trade_id": self.trade_id,
            "price": str(self.price),
            "size": str(self.size),
            "side": self.side,
            "ts_event_us": self.ts_event_us,
            "ts_recv_us": self.ts_recv_us,
        }


@dataclass(frozen=True, slots=True)
class FeedStatus:
    exchange: str
    state: FeedState
    reason: str
    ts_us: int
    shard: str = ""  # the ingestor shard that sent it ("1/2"), empty for an ingestor serving every pair
    type: Literal["status"] = "status"

    def to_dict(self) -> dict[str, Any]:
        out = {"type": "status", "exchange": self.exchange, "state": self.state, "reason": self.reason,
               "ts_us": self.ts_us}
        if self.shard:
            out["shard"] = self.shard
        return out


Message = BBO | Book | Trade | FeedStatus


def encode(msg: Message) -> bytes:
    return orjson.dumps(msg.to_dict())


def _d(v: Any) -> Decimal:
    if not isinstance(v, str):
        raise SchemaError(f"expected a decimal string, got {type(v).__name__}")
    return Decimal(v)


def _levels(raw: Any) -> tuple[Level, ...]:
    return tuple((_d(p), _d(s)) for p, s in raw)


def from_dict(o: dict[str, Any]) -> Message:
    try:
        t = o["type"]
        if t == "bbo":
            return BBO(o["exchange"], o["symbol"], _d(o["bid_px"]), _d(o["bid_sz"]), _d(o["ask_px"]), _d(o["ask_sz"]),
                       int(o["seq"]), int(o["ts_event_us"]), int(o["ts_recv_us"]))
        if t == "book":
            return Book(o["exchange"], o["symbol"], _levels(o["bids"]), _levels(o["asks"]), int(o["seq"]),
                        int(o["ts_event_us"]), int(o["ts_recv_us"]))
        if t == "trade":
            side = o["side"]
            if side not in ("buy", "sell"):
                raise SchemaError(f"bad side {side!r}")
            return Trade(o["exchange"], o["symbol"], str(o["trade_id"]), _d(o["price"]), _d(o["size"]), side,
                         int(o["ts_event_us"]), int(o["ts_recv_us"]))
        if t == "status":
            if o["state"] not in ("up", "stale", "down"):
                raise SchemaError(f"bad state {o['state']!r}")
            shard = o.get("shard", "")
            if not isinstance(shard, str):
                raise SchemaError("shard must be a string")
            return FeedStatus(o["exchange"], o["state"], str(o.get("reason", "")), int(o["ts_us"]), shard)
    except SchemaError:
        raise
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise SchemaError(f"malformed {o.get('type')!r} message: {e!r}") from None
    raise SchemaError(f"unknown message type {t!r}")


def decode(raw: bytes | str) -> Message:
    try:
        o = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise SchemaError(f"not JSON: {e}") from None
    if not isinstance(o, dict):
        raise SchemaError("not a JSON object")
    return from_dict(o)
