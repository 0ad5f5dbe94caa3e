"""Binance parser: doc-shaped frames field by field, the real hftbacktest capture, and bad frames."""

from __future__ import annotations

import gzip
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from ingestor.binance import BinanceParser, build_url, stream_table
from ingestor.parsing import Control, FrameError
from shared.schema import BBO, Book, Trade
from tests.ingestor_helpers import doc_settings

RECV = 1_700_000_000_123_456


@pytest.fixture
def parser(tmp_path: Path) -> BinanceParser:
    return BinanceParser(doc_settings(tmp_path))


def wrap(stream: str, data: dict) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def test_url_puts_every_stream_in_the_query(tmp_path: Path) -> None:
    s = doc_settings(tmp_path, BINANCE_WS_URL="ws://127.0.0.1:9001/")
    assert build_url(s) == (
        "ws://127.0.0.1:9001/stream?streams="
        "btcusdt@bookTicker/btcusdt@depth10@100ms/btcusdt@trade/"
        "bnbusdt@bookTicker/bnbusdt@depth10@100ms/bnbusdt@trade/"
        "bnbbtc@bookTicker/bnbbtc@depth10@100ms/bnbbtc@trade")
    s5 = doc_settings(tmp_path, SR_BINANCE__DEPTH_LEVELS="5")
    assert stream_table(s5)["btcusdt@depth5@100ms"] == ("book", "BTCUSDT")


def test_book_ticker_as_documented(parser: BinanceParser) -> None:
    doc = {"u": 400900217, "s": "BNBUSDT", "b": "25.35190000", "B": "31.21000000", "a": "25.36520000",
           "A": "40.66000000"}
    [m] = parser.parse(wrap("bnbusdt@bookTicker", doc), RECV)
    assert m == BBO("binance", "BNBUSDT", Decimal("25.35190000"), Decimal("31.21000000"), Decimal("25.36520000"),
                    Decimal("40.66000000"), 400900217, RECV, RECV)
    assert str(m.bid_px) == "25.35190000"  # exact digits kept


def test_partial_depth_as_documented_takes_symbol_from_stream(parser: BinanceParser) -> None:
    doc = {"lastUpdateId": 160, "bids": [["0.0024", "10"]], "asks": [["0.0026", "100"]]}
    [m] = parser.parse(wrap("bnbbtc@depth10@100ms", doc), RECV)
    assert isinstance(m, Book)
    assert (m.exchange, m.symbol, m.seq) == ("binance", "BNBBTC", 160)
    assert m.bids == ((Decimal("0.0024"), Decimal("10")),)
    assert m.asks == ((Decimal("0.0026"), Decimal("100")),)
    assert m.ts_event_us == RECV and m.ts_recv_us == RECV


def test_trade_as_documented_taker_side(parser: BinanceParser) -> None:
    doc = {"e": "trade", "E": 1672515782136, "s": "BNBBTC", "t": 12345, "p": "0.001", "q": "100",
           "T": 1672515782136, "m": True, "M": True}
    [m] = parser.parse(wrap("bnbbtc@trade", doc), RECV)
    assert m == Trade("binance", "BNBBTC", "12345", Decimal("0.001"), Decimal("100"), "sell",
                      1672515782136000, RECV)
    [m2] = parser.parse(wrap("bnbbtc@trade", {**doc, "m": False}), RECV)
    assert m2.side == "buy"  # buyer was the taker


def test_server_shutdown_and_control_frames(parser: BinanceParser) -> None:
    assert parser.parse(b'{"e":"serverShutdown","E":1746093260000}', RECV) == Control("reconnect", "serverShutdown")
    wrapped = wrap("serverShutdown", {"e": "serverShutdown", "E": 1})
    assert parser.parse(wrapped, RECV).kind == "reconnect"  # type: ignore[union-attr]
    assert parser.parse(b'{"result":null,"id":1}', RECV).kind == "info"  # type: ignore[union-attr]
    err = parser.parse(b'{"code":2,"msg":"Invalid request: unknown stream"}', RECV)
    assert err == Control("error", "2: Invalid request: unknown stream")


GOOD_TICKER = {"u": 1, "s": "BTCUSDT", "b": "100.0", "B": "1", "a": "100.1", "A": "2"}
GOOD_TRADE = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 9, "p": "100", "q": "1", "T": 1, "m": False, "M": True}


@pytest.mark.parametrize(("frame", "reason"), [
    (b"not json", "bad_json"),
    (b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"1"', "bad_json"),  # truncated
    (b"[1,2]", "bad_json"),
    (b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":NaN}}', "bad_json"),
    (wrap("btcusdt@bookTicker", {**GOOD_TICKER, "b": "NaN"}), "bad_number"),
    (wrap("btcusdt@bookTicker", {**GOOD_TICKER, "a": "Infinity"}), "bad_number"),
    (wrap("btcusdt@bookTicker", {**GOOD_TICKER, "b": "-1"}), "bad_number"),
    (wrap("btcusdt@bookTicker", {**GOOD_TICKER, "b": "0"}), "bad_number"),
    (wrap("btcusdt@bookTicker", {**GOOD_TICKER, "B": "-0.5"}), "bad_number"),
    (wrap("btcusdt@bookTicker", {**GOOD_TICKER, "b": 100.0}), "bad_number"),
    (wrap("btcusdt@bookTicker", {**GOOD_TICKER, "b": "1e30"}), "bad_number"),
    (wrap("btcusdt@bookTicker", {**GOOD_TICKER, "b": "abc"}), "bad_number"),
    (wrap("btcusdt@bookTicker", {k: v for k, v in GOOD_TICKER.items() if k != "A"}), "malformed"),
    (wrap("btcusdt@bookTicker", {**GOOD_TICKER, "b": "100.2"}), "crossed"),
    (wrap("btcusdt@bookTicker", {**GOOD_TICKER, "s": "ETHUSDT"}), "unknown_symbol"),
    (wrap("ethusdt@bookTicker", GOOD_TICKER), "unknown_stream"),
    (wrap("btcusdt@depth@100ms", {"e": "depthUpdate"}), "unknown_stream"),
    (wrap("btcusdt@depth10@100ms", {"lastUpdateId": 1, "bids": [["10", "1"]], "asks": [["9", "1"]]}), "crossed"),
    (wrap("btcusdt@depth10@100ms", {"lastUpdateId": 1, "bids": [["9", "1"], ["10", "1"]], "asks": []}),
     "unsorted"),
    (wrap("btcusdt@depth10@100ms", {"lastUpdateId": 1, "bids": [["9"]], "asks": []}), "malformed"),
    (wrap("btcusdt@depth10@100ms", {"lastUpdateId": -5, "bids": [], "asks": []}), "bad_field"),
    (wrap("btcusdt@trade", {**GOOD_TRADE, "q": "0"}), "bad_number"),
    (wrap("btcusdt@trade", {**GOOD_TRADE, "m": "yes"}), "bad_field"),
    (wrap("btcusdt@trade", {**GOOD_TRADE, "T": "soon"}), "bad_field"),
    (wrap("btcusdt@trade", {**GOOD_TRADE, "data": None, "p": None}), "bad_number"),
    (b'{"stream":"btcusdt@trade","data":"oops"}', "malformed"),
    (b'{"hello":"world"}', "unknown_frame"),
])
def test_bad_frames_are_rejected_with_a_reason(parser: BinanceParser, frame: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as ei:
        parser.parse(frame, RECV)
    assert ei.value.reason == reason


def test_the_good_variants_of_those_frames_parse(parser: BinanceParser) -> None:
    assert parser.parse(wrap("btcusdt@bookTicker", GOOD_TICKER), RECV)
    assert parser.parse(wrap("btcusdt@trade", GOOD_TRADE), RECV)
    [book] = parser.parse(wrap("btcusdt@depth10@100ms", {"lastUpdateId": 1, "bids": [], "asks": [["9", "1"]]}), RECV)
    assert isinstance(book, Book) and book.bids == ()


@pytest.mark.captures
def test_real_capture_book_ticker_and_trade_frames(captures_dir: Path, tmp_path: Path) -> None:
    parser = BinanceParser(doc_settings(tmp_path))
    counts = {"bbo": 0, "trade": 0, "unknown_stream": 0}
    first: dict[str, tuple[dict, object]] = {}
    with gzip.open(captures_dir / "hftbacktest" / "btcusdt_20240808.gz", "rb") as fh:
        for line in fh:
            recv_ns, _, raw = line.partition(b" ")
            o = orjson.loads(raw)
            if "stream" not in o:
                continue  # the recorder's REST snapshot line
            recv_us = int(recv_ns) // 1000
            try:
                [m] = parser.parse(raw, recv_us)  # type: ignore[misc]
            except FrameError as e:
                assert e.reason == "unknown_stream" and o["stream"] == "btcusdt@depth@100ms"
                counts["unknown_stream"] += 1
                continue
            counts[m.type] += 1
            first.setdefault(m.type, (o["data"], m))
            if isinstance(m, BBO):
                d = o["data"]
                assert (m.bid_px, m.bid_sz, m.ask_px, m.ask_sz) == tuple(Decimal(d[k]) for k in "bBaA")
                assert m.seq == d["u"] and m.ts_event_us == recv_us and m.bid_px < m.ask_px
            elif isinstance(m, Trade):
                d = o["data"]
                assert (m.trade_id, m.price, m.size) == (str(d["t"]), Decimal(d["p"]), Decimal(d["q"]))
                assert m.side == ("sell" if d["m"] else "buy") and m.ts_event_us == d["T"] * 1000
    assert counts == {"bbo": 28040, "trade": 9757, "unknown_stream": 3451}  # the README's figures
    d, m = first["bbo"]
    assert m == BBO("binance", "BTCUSDT", Decimal("61837.63000000"), Decimal("3.78826000"),
                    Decimal("61837.64000000"), Decimal("1.54698000"), 50093239212, m.ts_recv_us, m.ts_recv_us)
    d, m = first["trade"]
    assert m == Trade("binance", "BTCUSDT", "3735683259", Decimal("61837.63000000"), Decimal("0.02000000"), "sell",
                      1723161255342000, m.ts_recv_us)


def test_cached_prices_and_sizes_are_the_same_values_and_refusals_still_hold() -> None:
    """price()/size() remember accepted strings: a second look gives the same Decimal (digits kept), a size
    accepted as "0" is still no price, and a full cache starts over."""
    from ingestor import parsing

    for _ in range(2):
        assert str(parsing.price("64000.10")) == "64000.10" and str(parsing.size("0.00000000")) == "0E-8"
    assert parsing.size("0") == 0
    with pytest.raises(FrameError, match="absurd price"):
        parsing.price("0")
    with pytest.raises(FrameError, match="zero trade size"):
        parsing.trade_size("0")
    for bad in (["1"], {"a": 1}, 1, "1e3", " 1"):
        with pytest.raises(FrameError, match="not a plain decimal"):
            parsing.price(bad)
    for i in range(parsing.CACHE_MAX + 10):
        parsing.size(f"{i}.5")
    assert len(parsing._SIZES) <= parsing.CACHE_MAX and parsing.size("3.5") == Decimal("3.5")
