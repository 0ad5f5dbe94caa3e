"""OKX v5 public: subscription requests and the pure frame parser.

On every connect we send one ``subscribe`` request per channel (all pairs in its ``args``), paced
``SUBSCRIBE_PACE_S`` apart. Channels -> messages:

- ``bbo-tbt`` -> ``BBO``    - ``books5`` -> ``Book``    - ``trades`` -> ``Trade`` (``side`` is the taker's)

``ts_event_us`` is the exchange's ``ts``. Events: ``subscribe`` acks, ``error`` (counted, no redial: the
same request would fail again), ``notice`` 64008 (service upgrade: redial now), ``channel-conn-count``
and anything else informational. The text ``pong`` answers our keepalive ``ping``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ingestor.parsing import (
    MALFORMED,
    Control,
    FrameError,
    MdMessage,
    ParseResult,
    book_sides,
    check_not_crossed,
    integer,
    load_object,
    ms_to_us,
    price,
    size,
    trade_id,
    trade_size,
)
from shared.schema import BBO, Book, Trade
from shared.settings import Settings

EXCHANGE = "okx"
CHANNELS = ("bbo-tbt", "books5", "trades")
MAX_ARGS_PER_REQUEST = 50  # keeps each request far below OKX's 64 KB limit
SUBSCRIBE_PACE_S = 0.35  # stays under 3 requests/s
PING = "ping"
NOTICE_RECONNECT = "64008"


def subscribe_requests(settings: Settings) -> list[str]:
    inst_ids = list(settings.exchange_symbols(EXCHANGE))
    out: list[str] = []
    for channel in CHANNELS:
        for i in range(0, len(inst_ids), MAX_ARGS_PER_REQUEST):
            args = [{"channel": channel, "instId": inst} for inst in inst_ids[i:i + MAX_ARGS_PER_REQUEST]]
            out.append(orjson.dumps({"id": str(len(out) + 1), "op": "subscribe", "args": args}).decode())
    return out


class OkxParser:
    """``parse(frame, ts_recv_us)``: one raw frame -> messages or a Control; raises FrameError."""

    def __init__(self, settings: Settings) -> None:
        self._symbols = settings.exchange_symbols(EXCHANGE)

    def parse(self, frame: str | bytes, ts_recv_us: int) -> ParseResult:
        if frame == "pong" or frame == b"pong":
            return Control("pong")
        o = load_object(frame)
        try:
            if "event" in o:
                return self._event(o)
            arg = o["arg"]
            channel, inst = arg["channel"], arg["instId"]
            symbol = self._symbols.get(inst)
            if symbol is None:
                raise FrameError("unknown_symbol", f"{inst!r:.30}")
            data = o["data"]
            if type(data) is not list:
                raise FrameError("bad_field", "data is not a list")
            out: list[MdMessage] = []
            for d in data:
                if d.get("instId", inst) != inst:
                    raise FrameError("unknown_symbol", f"{d['instId']!r:.30} inside {inst}")
                if channel == "bbo-tbt":
                    out.append(self._bbo(d, symbol, ts_recv_us))
                elif channel == "trades":
                    out.append(self._trade(d, symbol, ts_recv_us))
                elif channel == "books5":
                    out.append(self._book(d, symbol, ts_recv_us))
                else:
                    raise FrameError("unknown_channel", f"{channel!r:.30}")
            return out
        except FrameError:
            raise
        except MALFORMED as e:
            raise FrameError("malformed", repr(e)[:120]) from None

    def _event(self, o: dict[str, Any]) -> Control:
        event = o["event"]
        if event == "subscribe":
            arg = o.get("arg") or {}
            return Control("subscribed", f"{arg.get('channel')} {arg.get('instId')}")
        if event == "error":
            return Control("error", f"{o.get('code')}: {o.get('msg')}")
        if event == "notice":
            if str(o.get("code")) == NOTICE_RECONNECT:
                return Control("reconnect", f"notice {o.get('code')}: {o.get('msg')}")
            return Control("info", f"notice {o.get('code')}: {o.get('msg')}")
        # channel-conn-count, unsubscribe, login...: informational, never an error.
        return Control("info", f"{event}: {orjson.dumps(o).decode()[:200]}")

    def _bbo(self, d: dict[str, Any], symbol: str, ts_recv_us: int) -> BBO:
        bids, asks = d["bids"], d["asks"]
        if not bids or not asks:
            raise FrameError("one_sided", "bbo without a bid or an ask")
        bid, ask = price(bids[0][0]), price(asks[0][0])
        check_not_crossed(bid, ask)
        return BBO(EXCHANGE, symbol, bid, size(bids[0][1]), ask, size(asks[0][1]), integer(d.get("seqId", 0)),
                   ms_to_us(d["ts"]), ts_recv_us)

    def _book(self, d: dict[str, Any], symbol: str, ts_recv_us: int) -> Book:
        bids, asks = book_sides(d)
        return Book(EXCHANGE, symbol, bids, asks, integer(d.get("seqId", 0)), ms_to_us(d["ts"]), ts_recv_us)

    def _trade(self, d: dict[str, Any], symbol: str, ts_recv_us: int) -> Trade:
        side = d["side"]
        if side != "buy" and side != "sell":
            raise FrameError("bad_field", f"side {side!r:.20}")
        return Trade(EXCHANGE, symbol, trade_id(d["tradeId"]), price(d["px"]), trade_size(d["sz"]), side, ms_to_us(d["ts"]),
                     ts_recv_us)
