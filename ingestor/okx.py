"""OKX v5 public: connection planning (subscribe requests) and the pure frame parser.

``plan_connections`` spreads the pairs over connections of at most ``okx.max_args_per_connection``
subscriptions (whole pairs, sizes balanced). On every connect each connection sends one ``subscribe`` request
per channel (its pairs in ``args``, split further if a request would exceed ``REQUEST_BYTES_BUDGET``), paced
``SUBSCRIBE_PACE_S`` apart; the ingestor opens the connections ``CONNECT_INTERVAL_S`` apart. Channels -> messages:

- ``bbo-tbt`` -> ``BBO``    - ``books5`` -> ``Book``    - ``trades`` -> ``Trade`` (``side`` is the taker's)

``ts_event_us`` is the exchange's ``ts``. Events: ``subscribe`` acks, ``error`` (counted, no redial: the
same request would fail again), ``notice`` 64008 (service upgrade: redial now), ``channel-conn-count``
and anything else informational. The text ``pong`` answers our keepalive ``ping``.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from ingestor.planning import ConnectionPlan, split_evenly
from shared.schema import BBO, Book, Trade
from shared.settings import Pair, Settings

EXCHANGE = "okx"
CHANNELS = ("bbo-tbt", "books5", "trades")

# OKX v5 limits (okx.com/docs-v5/en, "WebSocket" > "Overview"/"Subscribe"; ../shared/EXCHANGES.md): 3 connection
# requests per second per IP; 480 subscribe/unsubscribe/login requests per hour per connection; the channels
# of one request may total at most 64 KB. No limit on subscriptions per connection is documented for public
# channels (ours: ``okx.max_args_per_connection``).
CONNECTS_PER_S = 3
MAX_REQUESTS_PER_HOUR = 480
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_BYTES_BUDGET = 16 * 1024  # a quarter of the limit: a few hundred args per request
SUBSCRIBE_PACE_S = 0.35  # under 3 requests/s, should that limit count subscribe requests too
CONNECT_INTERVAL_S = 0.35  # between two dials of this process's connections (redials too): under 3/s
PING = "ping"
NOTICE_RECONNECT = "64008"


def _requests(inst_ids: Sequence[str], budget: int) -> list[str]:
    """One subscribe request per channel, split where a request would exceed ``budget`` bytes."""
    out: list[str] = []
    for channel in CHANNELS:
        args: list[dict[str, str]] = []
        size = 0
        for inst in inst_ids:
            arg = {"channel": channel, "instId": inst}
            # Envelope {"id":"NNNN","op":"subscribe","args":[]} is < 50 bytes; +1 for each comma.
            n = len(orjson.dumps(arg)) + 1
            if args and 50 + size + n > budget:
                out.append(orjson.dumps({"id": str(len(out) + 1), "op": "subscribe", "args": args}).decode())
                args, size = [], 0
            args.append(arg)
            size += n
        if args:
            out.append(orjson.dumps({"id": str(len(out) + 1), "op": "subscribe", "args": args}).decode())
    return out


def subscribe_requests(settings: Settings, pairs: Sequence[Pair] | None = None,
                       budget: int = REQUEST_BYTES_BUDGET) -> list[str]:
    """The requests of one connection serving ``pairs`` (default: every configured pair)."""
    return _requests([p.okx for p in (settings.pairs if pairs is None else pairs)], budget)


def plan_connections(settings: Settings, pairs: Sequence[Pair], *,
                     budget: int = REQUEST_BYTES_BUDGET) -> list[ConnectionPlan]:
    """The connections for ``pairs``: whole pairs per connection, at most ``okx.max_args_per_connection``
    (channel, instId) subscriptions each."""
    pairs_per_conn = max(1, settings.okx.max_args_per_connection // len(CHANNELS))
    plans: list[ConnectionPlan] = []
    for i, chunk in enumerate(split_evenly(pairs, pairs_per_conn)):
        reqs = tuple(subscribe_requests(settings, chunk, budget))
        if len(reqs) > MAX_REQUESTS_PER_HOUR:
            raise ValueError(f"{len(reqs)} subscribe requests on one OKX connection exceed {MAX_REQUESTS_PER_HOUR}/h")
        keys = tuple(f"{ch}:{p.okx}" for ch in CHANNELS for p in chunk)
        plans.append(ConnectionPlan(i, tuple(p.symbol for p in chunk), keys, settings.okx.ws_url, reqs,
                                    SUBSCRIBE_PACE_S))
    return plans


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
