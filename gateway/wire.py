"""Client-facing JSON: pure builders for every pushed message.

Prices and sizes become JSON numbers carrying the exact digits of the ``Decimal`` (``64000.10`` stays
``64000.10``; never through a float), via ``orjson.Fragment``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from gateway.wsframe import text_frame
from shared.best_touch import Touch
from shared.klines import Candle
from shared.schema import Trade


def num(d: Decimal | None) -> orjson.Fragment | None:
    if d is None:
        return None
    if not d.is_finite():
        raise ValueError(f"not a finite number: {d}")
    s = str(d)
    if "E" in s:  # str() switches to exponent form for tiny values: spell them out
        s = format(d, "f")
    return orjson.Fragment(s.encode())


def dumps(o: Any) -> str:
    return orjson.dumps(o).decode()


def push(stream: str, topic: str, data: bytes | dict[str, Any], **extra: Any) -> str:
    """A pushed message; ``data`` may already be serialized (then it is embedded as is)."""
    return _push_json(stream, topic, data, extra).decode()


def push_frame(stream: str, topic: str, data: bytes | dict[str, Any], **extra: Any) -> bytes:
    """``push`` as a ready WebSocket text frame, built once and shared by every subscriber."""
    return text_frame(_push_json(stream, topic, data, extra))


def _push_json(stream: str, topic: str, data: bytes | dict[str, Any], extra: dict[str, Any]) -> bytes:
    body = orjson.Fragment(data) if isinstance(data, bytes) else data
    return orjson.dumps({"type": stream, "topic": topic, **extra, "data": body})


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


def ewma_data(symbol: str, exchange: str, half_life: Decimal, value: Decimal, t: Trade) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "exchange": exchange,
        "half_life": num(half_life),
        "value": num(value),
        "price": num(t.price),
        "ts_event_us": t.ts_event_us,
        "ts_recv_us": t.ts_recv_us,
    }


ORDER_DECIMALS = ("price", "quantity", "filled_quantity", "filled_notional", "average_price", "fee", "reserved")
FILL_DECIMALS = ("price", "quantity", "fee")


def _nums(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = dict(d)
    for k in keys:
        v = out.get(k)
        if isinstance(v, str):
            out[k] = num(Decimal(v))
    return out


def order_data(order: dict[str, Any]) -> dict[str, Any]:
    """A public order (decimal strings, as REST gives it) with its amounts as exact JSON numbers."""
    out = _nums(order, ORDER_DECIMALS)
    out.pop("user_id", None)
    if isinstance(out.get("fills"), list):
        out["fills"] = [_nums(f, FILL_DECIMALS) for f in out["fills"]]
    return out


def order_event(ev: dict[str, Any]) -> str:
    """An order event from Redis as the ``orders`` stream pushes it."""
    data: dict[str, Any] = {"event": ev.get("event"), "order": order_data(ev.get("order", {}))}
    if ev.get("fills"):
        data["fills"] = [_nums(f, FILL_DECIMALS) for f in ev["fills"]]
    return push("order", "orders", data)


def balance_data(balance: dict[str, dict[str, str]]) -> dict[str, Any]:
    """``{"total": {asset: "1.5"}, ...}`` (REST's balance view) with exact JSON numbers."""
    return {kind: {a: num(Decimal(v)) for a, v in amounts.items()} for kind, amounts in balance.items()}
