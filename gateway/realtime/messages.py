"""What the WebSocket sends: pure builders for every pushed message and for the domain objects in replies.

Prices and sizes become JSON numbers carrying the exact digits of the ``Decimal`` (market data as the
exchange wrote it, ``64000.10``; balances and orders without trailing zeros), never through a float
(``gateway.jsonio``). Only pushed data carries ``topic``; replies name a subscription ``subscription``.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from gateway.jsonio import amount, number, number_text
from gateway.realtime.frames import text_frame
from shared.best_touch import Touch
from shared.klines import Candle
from shared.ledger import Balance, Fill, Order, OrderEvent
from shared.schema import Trade


def num(d: Decimal | None) -> orjson.Fragment | None:
    return None if d is None else number(d)


def push_frame(stream: str, topic: str, data: bytes | dict[str, Any], **extra: Any) -> bytes:
    """A pushed message as a ready WebSocket text frame, built once and shared by every subscriber; ``data`` may
    already be serialized (then it is embedded as is)."""
    body = orjson.Fragment(data) if isinstance(data, bytes) else data
    return text_frame(orjson.dumps({"type": stream, "topic": topic, **extra, "data": body}))


def touch_data(t: Touch, exchange: str) -> dict[str, Any]:
    return {
        "symbol": t.symbol,
        "exchange": exchange,
        "bid_px": num(t.bid_px),
        "bid_sz": num(t.bid_sz),
        "bid_exchange": t.bid_exchanges[0] if t.bid_exchanges else None,
        "bid_exchanges": list(t.bid_exchanges),
        "ask_px": num(t.ask_px),
        "ask_sz": num(t.ask_sz),
        "ask_exchange": t.ask_exchanges[0] if t.ask_exchanges else None,
        "ask_exchanges": list(t.ask_exchanges),
        "live": list(t.live),
        "crossed": t.crossed,
        "ts_event_us": t.ts_event_us,
        "ts_recv_us": t.ts_recv_us,
    }


def trade_data(t: Trade) -> bytes:
    return orjson.dumps({
        "symbol": t.symbol,
        "exchange": t.exchange,
        "trade_id": t.trade_id,
        "price": num(t.price),
        "size": num(t.size),
        "side": t.side,
        "ts_event_us": t.ts_event_us,
        "ts_recv_us": t.ts_recv_us,
    })


def candle_data(c: Candle, symbol: str, exchange: str, interval: str, history: bool = False) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "exchange": exchange,
        "interval": interval,
        "open_time_us": c.open_time_us,
        "close_time_us": c.close_time_us,
        "open": num(c.open),
        "high": num(c.high),
        "low": num(c.low),
        "close": num(c.close),
        "volume": num(c.volume),
        "trades": c.trades,
        "closed": c.closed,
        "history": history,
        "ts_event_us": c.ts_event_us,
        "ts_recv_us": c.ts_recv_us,
    }


def ewma_data(symbol: str, exchange: str, half_life: Decimal, value: Decimal | orjson.Fragment,
              t: Trade) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "exchange": exchange,
        "half_life": num(half_life),
        "value": value if isinstance(value, orjson.Fragment) else num(value),
        "price": num(t.price),
        "ts_event_us": t.ts_event_us,
        "ts_recv_us": t.ts_recv_us,
    }


_VALUE = b'"\x00value"'


class EwmaFrames:
    """The ``ewma`` frames of one trade on one topic, one per value: the rest is serialized once."""

    __slots__ = ("_head", "_tail")

    def __init__(self, topic: str, symbol: str, exchange: str, half_life: Decimal, t: Trade) -> None:
        data = ewma_data(symbol, exchange, half_life, orjson.Fragment(_VALUE), t)
        self._head, self._tail = orjson.dumps({"type": "ewma", "topic": topic, "data": data}).split(_VALUE)

    def __call__(self, value: Decimal) -> bytes:
        return text_frame(self._head + number_text(value) + self._tail)


ORDER_FIELDS = ("token_id", "symbol", "side", "type", "price", "quantity", "status", "filled_quantity",
                "filled_notional", "average_price", "fee", "fee_asset", "reserve_asset", "reserved", "exchanges",
                "created_us", "updated_us", "version", "reason")
FILL_FIELDS = ("fill_id", "token_id", "symbol", "side", "price", "quantity", "fee", "fee_asset", "exchange",
               "liquidity", "ts_us")


def _value(v: Any) -> Any:
    if isinstance(v, Decimal):
        return amount(v)
    if isinstance(v, tuple):
        return list(v)
    return v


def order_data(order: Order, fills: tuple[Fill, ...] | None = None) -> dict[str, Any]:
    out = {f: _value(getattr(order, f)) for f in ORDER_FIELDS}
    if fills is not None:
        out["fills"] = [fill_data(f) for f in fills]
    return out


def fill_data(fill: Fill) -> dict[str, Any]:
    return {f: _value(getattr(fill, f)) for f in FILL_FIELDS}


def order_event(ev: OrderEvent) -> bytes:
    """An order event as the ``orders`` stream pushes it, as a frame."""
    data: dict[str, Any] = {"event": ev.kind, "order": order_data(ev.order)}
    if ev.fills:
        data["fills"] = [fill_data(f) for f in ev.fills]
    return push_frame("order", "orders", data)


def balance_data(balances: Mapping[str, Balance]) -> dict[str, Any]:
    """``{"total": {asset: 1.5}, "available": {...}, "reserved": {...}}``."""
    return {"total": {a: amount(b.total) for a, b in balances.items()},
            "available": {a: amount(b.available) for a, b in balances.items()},
            "reserved": {a: amount(b.reserved) for a, b in balances.items()}}
