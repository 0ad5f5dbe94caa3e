"""Binance spot: connection planning (combined-stream URL + SUBSCRIBE frames) and the pure frame parser.

``plan_connections`` spreads the pairs over as few connections as Binance's 1024 streams per connection
allow (whole pairs per connection, sizes balanced). On each connection the first streams go in the URL
(``<ws_url>/stream?streams=a/b/c``) up to ``MAX_URL_CHARS``; the rest are added with ``SUBSCRIBE`` frames of at
most ``SUBSCRIBE_MAX_PARAMS`` streams, ``SUBSCRIBE_PACE_S`` apart, so that with picows' automatic pongs
we stay under Binance's 5 incoming messages/s. A few pairs fit in the URL alone: no message is sent. Per pair:

- ``<sym>@bookTicker``        -> ``BBO`` (no event time on spot: ``ts_event_us`` is the receive time)
- ``<sym>@depth<N>@100ms``    -> ``Book`` (no symbol in the payload: taken from the wrapper's ``stream``)
- ``<sym>@trade``             -> ``Trade`` (``m`` true = buyer is maker = the taker sold)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ingestor.parsing import (
    MALFORMED,
    Control,
    FrameError,
    ParseResult,
    book_sides,
    check_not_crossed,
    integer,
    load_object,
    ms_to_us,
    price,
    size,
    trade_size,
)
from ingestor.planning import ConnectionPlan, split_evenly
from shared.schema import BBO, Book, Trade
from shared.settings import Pair, Settings

EXCHANGE = "binance"

# Binance Spot limits (binance-spot-api-docs, web-socket-streams.md, "WebSocket Limits"; ../shared/EXCHANGES.md):
# a connection listens to at most 1024 streams; it may send at most 5 messages per second (pings, pongs and
# SUBSCRIBE/UNSUBSCRIBE frames all count; over that it is disconnected); 300 connection attempts per 5 minutes
# per IP.
MAX_STREAMS = 1024
MAX_INCOMING_PER_S = 5
CONNECTS_PER_5_MIN = 300
# One SUBSCRIBE every 0.35 s is under 3 messages/s: a pong picows sends on its own in the same second
# still leaves us under 5.
SUBSCRIBE_PACE_S = 0.35
# Streams per SUBSCRIBE frame: Binance documents no cap; 200 names are ~5 KB, a small frame.
SUBSCRIBE_MAX_PARAMS = 200
# The URL length is not documented; handshakes longer than ~8000 characters are refused (measured at 8004 by
# unicorn-binance-websocket-api, issue #17), and many HTTP servers cap the request line at 8 KiB (the websockets
# library too). We keep every URL under half of that and SUBSCRIBE the rest.
MAX_URL_CHARS = 4096
# Between two dials of this process's connections (also redials): at most 4/s, well within 300 per 5 min,
# while the backoff keeps reconnect storms far below.
CONNECT_INTERVAL_S = 0.25
STREAMS_PER_PAIR = 3


def pair_streams(pair: Pair, depth: int) -> tuple[str, str, str]:
    """A pair's streams: bookTicker, partial depth, trade (names are the exchange symbol in lowercase)."""
    s = pair.binance.lower()
    return f"{s}@bookTicker", f"{s}@depth{depth}@100ms", f"{s}@trade"


def stream_table(settings: Settings) -> dict[str, tuple[str, str]]:
    """Stream name -> (kind, our symbol), from the configured pair mapping."""
    depth = settings.binance.depth_levels
    table: dict[str, tuple[str, str]] = {}
    for p in settings.pairs:
        book_ticker, depth_stream, trade = pair_streams(p, depth)
        table[book_ticker] = ("bbo", p.symbol)
        table[depth_stream] = ("book", p.symbol)
        table[trade] = ("trade", p.symbol)
    return table


def _url(base: str, streams: Sequence[str], max_chars: int) -> tuple[str, int]:
    """The combined-stream URL with as many of ``streams`` (at least one) as fit in ``max_chars``."""
    url = base + "/stream?streams=" + streams[0]
    n = 1
    for name in streams[1:]:
        if len(url) + 1 + len(name) > max_chars:
            break
        url += "/" + name
        n += 1
    return url, n


def plan_connections(settings: Settings, pairs: Sequence[Pair], *, max_url_chars: int = MAX_URL_CHARS,
                     subscribe_max_params: int = SUBSCRIBE_MAX_PARAMS) -> list[ConnectionPlan]:
    """The connections for ``pairs``: whole pairs per connection, at most
    ``min(MAX_STREAMS, binance.max_streams_per_connection)`` streams each."""
    max_streams = min(MAX_STREAMS, settings.binance.max_streams_per_connection)
    pairs_per_conn = max(1, max_streams // STREAMS_PER_PAIR)
    base = settings.binance.ws_url.rstrip("/")
    depth = settings.binance.depth_levels
    plans: list[ConnectionPlan] = []
    for i, chunk in enumerate(split_evenly(pairs, pairs_per_conn)):
        streams = [name for p in chunk for name in pair_streams(p, depth)]
        url, in_url = _url(base, streams, max_url_chars)
        rest = streams[in_url:]
        frames = tuple(
            orjson.dumps({"method": "SUBSCRIBE", "params": rest[j:j + subscribe_max_params], "id": k + 1}).decode()
            for k, j in enumerate(range(0, len(rest), subscribe_max_params)))
        plans.append(ConnectionPlan(i, tuple(p.symbol for p in chunk), tuple(streams), url, frames,
                                    SUBSCRIBE_PACE_S if frames else 0.0, in_url))
    return plans


def build_url(settings: Settings) -> str:
    """The URL of the single connection serving every configured pair (all streams in the URL)."""
    plans = plan_connections(settings, settings.pairs)
    if len(plans) != 1 or plans[0].subscribe:
        raise ValueError(f"{len(settings.pairs)} pairs do not fit in one Binance URL: use plan_connections")
    return plans[0].url


class BinanceParser:
    """``parse(frame, ts_recv_us)``: one raw frame -> messages or a Control; raises FrameError."""

    def __init__(self, settings: Settings) -> None:
        self._streams = stream_table(settings)
        self._symbols = settings.exchange_symbols(EXCHANGE)

    def parse(self, frame: str | bytes, ts_recv_us: int) -> ParseResult:
        o = load_object(frame)
        try:
            stream = o.get("stream")
            if stream is None:
                return self._bare(o)
            data = o["data"]
            route = self._streams.get(stream)
            if route is None:
                if type(data) is dict and data.get("e") == "serverShutdown":
                    return Control("reconnect", "serverShutdown")
                raise FrameError("unknown_stream", str(stream)[:60])
            kind, symbol = route
            if kind == "bbo":
                return [self._bbo(data, symbol, ts_recv_us)]
            if kind == "trade":
                return [self._trade(data, symbol, ts_recv_us)]
            return [self._book(data, symbol, ts_recv_us)]
        except FrameError:
            raise
        except MALFORMED as e:
            raise FrameError("malformed", repr(e)[:120]) from None

    def _bare(self, o: dict[str, Any]) -> ParseResult:
        if o.get("e") == "serverShutdown":
            return Control("reconnect", "serverShutdown")
        if "id" in o and "result" in o:
            return Control("info", f"reply to request {o['id']!r}")
        if "code" in o and "msg" in o:
            return Control("error", f"{o['code']}: {o['msg']}")
        raise FrameError("unknown_frame", repr(o)[:60])

    def _check_symbol(self, data: dict[str, Any], symbol: str) -> None:
        if self._symbols.get(data["s"]) != symbol:
            raise FrameError("unknown_symbol", f"{data['s']!r:.30} on stream of {symbol}")

    def _bbo(self, d: dict[str, Any], symbol: str, ts_recv_us: int) -> BBO:
        self._check_symbol(d, symbol)
        bid, ask = price(d["b"]), price(d["a"])
        check_not_crossed(bid, ask)
        return BBO(EXCHANGE, symbol, bid, size(d["B"]), ask, size(d["A"]), integer(d["u"]), ts_recv_us, ts_recv_us)

    def _book(self, d: dict[str, Any], symbol: str, ts_recv_us: int) -> Book:
        bids, asks = book_sides(d)
        return Book(EXCHANGE, symbol, bids, asks, integer(d["lastUpdateId"]), ts_recv_us, ts_recv_us)

    def _trade(self, d: dict[str, Any], symbol: str, ts_recv_us: int) -> Trade:
        self._check_symbol(d, symbol)
        m = d["m"]
        if type(m) is not bool:
            raise FrameError("bad_field", f"m is not a boolean: {m!r:.20}")
        return Trade(EXCHANGE, symbol, str(integer(d["t"])), price(d["p"]), trade_size(d["q"]), "sell" if m else "buy",
                     ms_to_us(d["T"]), ts_recv_us)
