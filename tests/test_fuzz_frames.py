"""Fuzzed exchange frames: the parsers return sane normalized messages, a Control, or raise FrameError."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ingestor.binance import BinanceParser
from ingestor.okx import OkxParser
from ingestor.parsing import Control, FrameError
from shared.money import MAX_AMOUNT
from shared.schema import BBO, Book, Trade, decode, encode
from tests.fuzzing import fuzz_settings
from tests.ingestor_helpers import doc_settings

RECV = 1_700_000_000_123_456
MAX_TS_US = 4_102_444_800_000_000  # 2100-01-01
SETTINGS = doc_settings(Path(__file__).parent)  # only reads the pairs: nothing written there
BINANCE = BinanceParser(SETTINGS)
OKX = OkxParser(SETTINGS)

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
nasty_numbers = st.sampled_from([
    "NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "1e999999999", "1E-999999999", "-1", "-0", "0", "0.0",
    "1e15", "1e16", "1e-30", "1_000", " 1 ", "١٢٣", "0x10", "", "1.", ".5", "1" * 400, "0." + "0" * 400 + "1",
    "1e+2", "9" * 30, "²", "00000",
]) | st.decimals(allow_nan=True, allow_infinity=True).map(str) | st.text(max_size=12)
field_values = json_values | nasty_numbers | st.integers() | st.floats() | st.lists(st.lists(nasty_numbers, max_size=3), max_size=3)


def check_sane(result: Any) -> None:
    if isinstance(result, Control):
        return
    assert isinstance(result, list)
    for m in result:
        assert isinstance(m, BBO | Book | Trade)
        assert decode(encode(m)) == m  # what consumers read back is what was produced
        assert 0 < m.ts_event_us <= MAX_TS_US and m.ts_recv_us == RECV
        if isinstance(m, BBO):
            prices, sizes = [m.bid_px, m.ask_px], [m.bid_sz, m.ask_sz]
            assert m.bid_px < m.ask_px
        elif isinstance(m, Book):
            prices = [p for p, _ in m.bids + m.asks]
            sizes = [s for _, s in m.bids + m.asks]
            if m.bids and m.asks:
                assert m.bids[0][0] < m.asks[0][0]
        else:
            prices, sizes = [m.price], [m.size]
            assert m.size > 0 and m.side in ("buy", "sell") and 0 < len(m.trade_id) <= 64
        for p in prices:
            assert p.is_finite() and 0 < p <= MAX_AMOUNT and p.as_tuple().exponent >= -40, p
        for s in sizes:
            assert s.is_finite() and 0 <= s <= MAX_AMOUNT and s.as_tuple().exponent >= -40, s


def parse_ok(parser: BinanceParser | OkxParser, frame: bytes | str) -> None:
    try:
        result = parser.parse(frame, RECV)
    except FrameError:
        return
    check_sane(result)


def mutate(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """Drop, replace or keep each field of a valid frame, recursively."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            op = draw(st.integers(0, 9))
            if op == 0:
                continue
            out[k] = draw(field_values) if op == 1 else mutate(draw, v, depth + 1)
        if draw(st.integers(0, 9)) == 0:
            out[draw(st.text(max_size=6))] = draw(field_values)
        return out
    if isinstance(value, list):
        items = [mutate(draw, v, depth + 1) for v in value if draw(st.integers(0, 9)) != 0]
        if draw(st.integers(0, 5)) == 0:
            items = list(reversed(items))
        if draw(st.integers(0, 9)) == 0:
            items.append(draw(field_values))
        return items
    op = draw(st.integers(0, 5))
    if op == 0:
        return draw(field_values)
    if op == 1 and isinstance(value, str):
        return draw(nasty_numbers)
    return value


BINANCE_VALID = [
    {"stream": "btcusdt@bookTicker", "data": {"u": 400900217, "s": "BTCUSDT", "b": "25.35190000",
                                              "B": "31.21000000", "a": "25.36520000", "A": "40.66000000"}},
    {"stream": "btcusdt@depth10@100ms", "data": {"lastUpdateId": 160, "bids": [["0.0024", "10"], ["0.0023", "1"]],
                                                 "asks": [["0.0026", "100"], ["0.0027", "1"]]}},
    {"stream": "bnbusdt@trade", "data": {"e": "trade", "E": 1672515782136, "s": "BNBUSDT", "t": 12345,
                                         "p": "0.001", "q": "100", "T": 1672515782136, "m": True, "M": True}},
    {"stream": "!shutdown", "data": {"e": "serverShutdown"}},
    {"e": "serverShutdown"}, {"id": 1, "result": None}, {"code": 2, "msg": "Invalid request"},
]
OKX_VALID = [
    {"arg": {"channel": "bbo-tbt", "instId": "BTC-USDT"},
     "data": [{"asks": [["100.1", "1", "0", "1"]], "bids": [["100", "1", "0", "1"]], "ts": "1700000000000",
               "seqId": 1}]},
    {"arg": {"channel": "books5", "instId": "BTC-USDT"},
     "data": [{"asks": [["64073.1", "1.07", "0", "8"], ["64074", "2", "0", "3"]],
               "bids": [["64073", "0.3", "0", "2"], ["64070", "0.25", "0", "1"]], "instId": "BTC-USDT",
               "ts": "1786538744703", "seqId": 79706756139}]},
    {"arg": {"channel": "trades", "instId": "BTC-USDT"},
     "data": [{"instId": "BTC-USDT", "tradeId": "130639474", "px": "42219.9", "sz": "0.12060306", "side": "buy",
               "ts": "1630048897897", "count": "3"}]},
    {"event": "subscribe", "arg": {"channel": "trades", "instId": "BTC-USDT"}, "connId": "a4d3ae55"},
    {"event": "error", "code": "60012", "msg": "Invalid request"},
    {"event": "notice", "code": "64008", "msg": "upgrade"},
]


@pytest.mark.parametrize("parser", [BINANCE, OKX], ids=["binance", "okx"])
@fuzz_settings(300)
@given(frame=st.binary(max_size=200) | st.text(max_size=200))
@example(frame=b"pong")
@example(frame="\ud800")
@example(frame=b"\xff\xfe")
@example(frame=b"[" * 2000)
def test_arbitrary_bytes_and_text(parser: Any, frame: bytes | str) -> None:
    parse_ok(parser, frame)


@pytest.mark.parametrize("parser", [BINANCE, OKX], ids=["binance", "okx"])
@fuzz_settings(300)
@given(value=json_values)
def test_arbitrary_json(parser: Any, value: Any) -> None:
    parse_ok(parser, json.dumps(value).encode())


@fuzz_settings(600)
@given(data=st.data())
def test_mutated_binance_frames(data: st.DataObject) -> None:
    frame = mutate(data.draw, data.draw(st.sampled_from(BINANCE_VALID)))
    parse_ok(BINANCE, json.dumps(frame).encode())


@fuzz_settings(600)
@given(data=st.data())
def test_mutated_okx_frames(data: st.DataObject) -> None:
    frame = mutate(data.draw, data.draw(st.sampled_from(OKX_VALID)))
    parse_ok(OKX, json.dumps(frame).encode())


@pytest.mark.parametrize("frame", [orjson.dumps(f) for f in BINANCE_VALID])
def test_valid_binance_frames_still_parse(frame: bytes) -> None:
    check_sane(BINANCE.parse(frame, RECV))


@pytest.mark.parametrize("frame", [orjson.dumps(f) for f in OKX_VALID])
def test_valid_okx_frames_still_parse(frame: bytes) -> None:
    check_sane(OKX.parse(frame, RECV))


def test_decimal_strings_round_trip_exactly() -> None:
    [m] = OKX.parse(orjson.dumps(OKX_VALID[2]), RECV)
    assert isinstance(m, Trade) and m.price == Decimal("42219.9")


def _with(frame: dict[str, Any], path: list[Any], value: Any) -> bytes:
    out = json.loads(json.dumps(frame))
    d = out
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return json.dumps(out).encode()


@pytest.mark.parametrize(("parser", "frame"), [
    # Found by fuzzing: accepted before, then printed as a million digits or overflowed the wire's 64-bit ints.
    (OKX, _with(OKX_VALID[2], ["data", 0, "px"], "1E-999999")),
    (OKX, _with(OKX_VALID[2], ["data", 0, "sz"], "1E-99")),
    (OKX, _with(OKX_VALID[2], ["data", 0, "ts"], "9" * 30)),
    (OKX, _with(OKX_VALID[2], ["data", 0, "ts"], "١٧٠٠٠٠٠٠٠٠٠٠٠")),
    (OKX, _with(OKX_VALID[2], ["data", 0, "tradeId"], "x" * 1000)),
    (OKX, _with(OKX_VALID[2], ["data", 0, "tradeId"], "1\n2")),
    (OKX, _with(OKX_VALID[0], ["data", 0, "asks", 0, 1], " 1")),
    (BINANCE, _with(BINANCE_VALID[2], ["data", "T"], 2**63 - 1)),
    (BINANCE, _with(BINANCE_VALID[2], ["data", "p"], "0." + "0" * 60 + "1")),
    (BINANCE, _with(BINANCE_VALID[2], ["data", "p"], "1_000")),
    (BINANCE, _with(BINANCE_VALID[0], ["data", "B"], "0E-99999")),
    (BINANCE, _with(BINANCE_VALID[1], ["data", "bids", 0, 0], "1e-3")),
], ids=lambda v: "" if isinstance(v, bytes) else None)
def test_absurd_numbers_ids_and_times_are_frame_errors(parser: Any, frame: bytes) -> None:
    with pytest.raises(FrameError):
        parser.parse(frame, RECV)
