"""Binance spot: combined-stream URL and the pure frame parser.

All streams go in the URL (``<ws_url>/stream?streams=a/b/c``), so we never send a message and stay far
under Binance's 5 incoming messages/s (websockets answers the server's pings by itself). Per pair:

- ``<sym>@bookTicker``        -> ``BBO`` (no event time on spot: ``ts_event_us`` is the receive time)
- ``<sym>@depth<N>@100ms``    -> ``Book`` (no symbol in the payload: taken from the wrapper's ``stream``)
- ``<sym>@trade``             -> ``Trade`` (``m`` true = buyer is maker = the taker sold)
"""

from __future__ import annotations

from typing import Any

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
from shared.schema import BBO, Book, Trade
from shared.settings import Settings

EXCHANGE = "binance"
MAX_STREAMS = 1024  # per connection


def stream_table(settings: Settings) -> dict[str, tuple[str, str]]:
    """Stream name -> (kind, our symbol), from the configured pair mapping."""
    depth = settings.binance.depth_levels
    table: dict[str, tuple[str, str]] = {}
    for ex_sym, sym in settings.exchange_symbols(EXCHANGE).items():
        s = ex_sym.lower()  # Binance stream names are the exchange symbol in lowercase
        table[f"{s}@bookTicker"] = ("bbo", sym)
        table[f"{s}@depth{depth}@100ms"] = ("book", sym)
        table[f"{s}@trade"] = ("trade", sym)
    return table


def build_url(settings: Settings) -> str:
    streams = list(stream_table(settings))
    if len(streams) > MAX_STREAMS:
        raise ValueError(f"{len(streams)} Binance streams exceed {MAX_STREAMS} per connection")
    return f"{settings.binance.ws_url.rstrip('/')}/stream?streams={'/'.join(streams)}"


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
