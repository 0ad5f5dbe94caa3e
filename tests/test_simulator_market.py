"""The simulator's pure parts: the market model, Binance/OKX request handling and frame building, replay parsing."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import orjson
import pytest

from shared.settings import load_settings
from simulator import binance, okx
from simulator.market import BookEvent, MarketModel, QuoteEvent, TradeEvent, pair_specs
from simulator.replay import classify, parse_line

SETTINGS = load_settings(env={})
SPECS = pair_specs(SETTINGS.pairs)
T0 = 1_700_000_000_000.0


def run(model: MarketModel, seconds: float, step_ms: float = 50.0) -> list:
    out = []
    t, end = T0, T0 + seconds * 1000
    while t < end:
        t = min(t + step_ms, end)
        out.extend(model.advance(t))
    return out


def test_same_seed_same_events_whatever_the_tick() -> None:
    a = run(MarketModel(SPECS, seed=7, start_ms=T0), 5, step_ms=10)
    b = run(MarketModel(SPECS, seed=7, start_ms=T0), 5, step_ms=333)
    c = run(MarketModel(SPECS, seed=8, start_ms=T0), 5)
    assert a == b
    assert a != c


def test_prices_on_tick_sizes_on_lot_and_books_consistent() -> None:
    events = run(MarketModel(SPECS, seed=1, start_ms=T0), 10)
    specs = {s.symbol: s for s in SPECS}
    last_quote: dict[tuple[str, str], QuoteEvent] = {}
    for ev in events:
        spec = specs[ev.symbol]
        if isinstance(ev, QuoteEvent):
            assert ev.bid < ev.ask
            for px in (ev.bid, ev.ask):
                assert px % spec.tick == 0 and px > 0
            for sz in (ev.bid_sz, ev.ask_sz):
                assert sz % spec.lot == 0 and sz > 0
            last_quote[(ev.exchange, ev.symbol)] = ev
        elif isinstance(ev, BookEvent):
            assert len(ev.asks) == 20 and len(ev.bids) == 20
            assert [lv.price for lv in ev.bids] == sorted((lv.price for lv in ev.bids), reverse=True)
            assert [lv.price for lv in ev.asks] == sorted(lv.price for lv in ev.asks)
            q = last_quote.get((ev.exchange, ev.symbol))
            if q is not None:  # the book's best level is the last bookTicker/bbo
                assert (ev.bids[0].price, ev.asks[0].price) == (q.bid, q.ask)
        else:
            assert isinstance(ev, TradeEvent)
            assert ev.price % spec.tick == 0 and ev.size % spec.lot == 0 and ev.size > 0
    btc = [e for e in events if isinstance(e, QuoteEvent) and e.symbol == "BTCUSDT"]
    assert all(Decimal(55000) < e.bid < Decimal(65000) for e in btc)


def test_rates_and_rate_multiplier() -> None:
    counts = Counter((e.kind, e.exchange) for e in run(MarketModel(SPECS, seed=2, start_ms=T0), 60)
                     if e.symbol == "ETHUSDT")
    assert 4500 < counts[("quote", "binance")] < 5200  # 81/s
    assert 680 < counts[("quote", "okx")] < 880  # 13/s
    assert 1550 < counts[("trade", "binance")] < 1810  # 28/s
    assert 330 < counts[("trade", "okx")] < 470  # 6.6/s
    assert 595 <= counts[("book", "okx")] <= 601  # every 100 ms
    fast = Counter(e.kind for e in run(MarketModel(SPECS, seed=2, rate=10, start_ms=T0), 6) if e.symbol == "ETHUSDT")
    assert 1150 <= fast["book"] <= 1202  # 2 exchanges x 10/s x 10 x 6 s


def test_exchanges_close_but_best_bid_moves_between_them() -> None:
    model = MarketModel(SPECS, seed=3, start_ms=T0)
    bids: dict[str, Decimal] = {}
    leader = Counter()
    for ev in run(model, 120):
        if isinstance(ev, QuoteEvent) and ev.symbol == "BTCUSDT":
            bids[ev.exchange] = ev.bid
            if len(bids) == 2:
                assert abs(bids["binance"] - bids["okx"]) / bids["okx"] < Decimal("0.001")
                if bids["binance"] != bids["okx"]:
                    leader[max(bids, key=lambda k: bids[k])] += 1
    assert leader["binance"] > 20 and leader["okx"] > 20


def test_pause_stops_one_exchange_symbol_only() -> None:
    model = MarketModel(SPECS, seed=4, start_ms=T0)
    model.pause("okx", "BTCUSDT")
    events = run(model, 3)
    assert not [e for e in events if (e.exchange, e.symbol) == ("okx", "BTCUSDT")]
    assert [e for e in events if (e.exchange, e.symbol) == ("binance", "BTCUSDT")]
    model.resume("okx", "BTCUSDT")
    more = model.advance(T0 + 5000)
    assert [e for e in more if (e.exchange, e.symbol) == ("okx", "BTCUSDT")]


# --- Binance pure parts ----------------------------------------------------------------------------

def valid(name: str) -> bool:
    key = binance.parse_stream(name)
    return key is not None and key.symbol in {"BTCUSDT", "ETHUSDT"}


def test_binance_stream_names() -> None:
    assert binance.parse_stream("btcusdt@depth10@100ms") == binance.StreamKey("BTCUSDT", "depth", 10, True)
    assert binance.parse_stream("btcusdt@bookTicker") == binance.StreamKey("BTCUSDT", "bookTicker")
    for bad in ("BTCUSDT@trade", "btcusdt@depth7", "btcusdt@bookticker", "btcusdt", "@trade", "btcusdt@trade@100ms"):
        assert binance.parse_stream(bad) is None, bad


def test_binance_paths() -> None:
    r = binance.parse_path("/stream?streams=btcusdt@trade/ethusdt@bookTicker", valid)
    assert r == binance.Route(True, ("btcusdt@trade", "ethusdt@bookTicker"))
    assert binance.parse_path("/ws/btcusdt@trade", valid) == binance.Route(False, ("btcusdt@trade",))
    assert binance.parse_path("/ws", valid) == binance.Route(False, ())
    assert binance.parse_path("/stream?streams=xxxusdt@trade", valid)[0] == 400  # type: ignore[index]
    assert binance.parse_path("/api/v3/depth", valid) == (404, "Not Found")


@pytest.mark.parametrize(
    ("request_text", "reply"),
    [
        ('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}', {"result": None, "id": 1}),
        ('{"method":"LIST_SUBSCRIPTIONS","id":"abc"}', {"result": ["ethusdt@bookTicker"], "id": "abc"}),
        ('{"method":"GET_PROPERTY","params":["combined"],"id":2}', {"result": True, "id": 2}),
        ('{"method":"SET_PROPERTY","params":["combined",false],"id":2}', {"result": None, "id": 2}),
        ('{"method":"SET_PROPERTY","params":["combined",1],"id":2}',
         {"error": {"code": 1, "msg": "Invalid value type: expected Boolean"}, "id": 2}),
        ('{"method":"GET_PROPERTY","params":["colour"],"id":2}', {"error": {"code": 0, "msg": "Unknown property"}, "id": 2}),
        ('{"method":"SUBSCRIBE","params":["BTCUSDT@trade"],"id":3}',
         {"error": {"code": 2, "msg": "Invalid request: invalid stream name `BTCUSDT@trade`"}, "id": 3}),
        ('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":-0.5}',
         {"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}, "id": None}),
        ('{"params":[],"id":4}', {"error": {"code": 2, "msg": "Invalid request: missing field `method`"}, "id": 4}),
    ],
)
def test_binance_requests(request_text: str, reply: dict) -> None:
    state = binance.SubState({"ethusdt@bookTicker": None}, combined=True)
    assert binance.apply_request(request_text, state, valid) == reply


def test_binance_bad_method_and_json() -> None:
    state = binance.SubState()
    r = binance.apply_request('{"method":"SUBSCRIB","params":[],"id":5}', state, valid)
    assert r["error"]["code"] == 2 and r["error"]["msg"].startswith("Invalid request: unknown variant `SUBSCRIB`")
    r = binance.apply_request("{not json", state, valid)
    assert r["error"]["code"] == 3 and r["error"]["msg"].startswith("Invalid JSON") and r["id"] is None
    # A failed request leaves the subscriptions as they were.
    binance.apply_request('{"method":"SUBSCRIBE","params":["btcusdt@trade","nope"],"id":6}', state, valid)
    assert state.subs == {}


def test_binance_frames() -> None:
    feed = binance.BinanceFeed({"BTCUSDT": "BTCUSDT"})
    q = QuoteEvent("binance", "BTCUSDT", 1723161255343, Decimal("61837.63"), Decimal("3.78826"),
                   Decimal("61837.64"), Decimal("1.54698"))
    [(name, data)] = feed.frames(q)
    assert name == "btcusdt@bookTicker"
    assert data == {"u": data["u"], "s": "BTCUSDT", "b": "61837.63000000", "B": "3.78826000",
                    "a": "61837.64000000", "A": "1.54698000"}
    t = TradeEvent("binance", "BTCUSDT", 1723161255342, Decimal("61837.63"), Decimal("0.02"), "sell")
    frames = dict(feed.frames(t))
    assert frames["btcusdt@trade"] == {"e": "trade", "E": 1723161255343, "s": "BTCUSDT", "t": frames["btcusdt@trade"]["t"],
                                       "p": "61837.63000000", "q": "0.02000000", "T": 1723161255342, "m": True,
                                       "M": True}
    assert frames["btcusdt@aggTrade"]["e"] == "aggTrade"


# --- OKX pure parts --------------------------------------------------------------------------------

def okx_valid(channel: str, inst: str) -> bool:
    return channel in okx.CHANNELS and inst in {"BTC-USDT"}


def test_okx_subscribe_acks_each_arg() -> None:
    state = okx.SubState()
    req = {"id": "1", "op": "subscribe", "args": [{"channel": "bbo-tbt", "instId": "BTC-USDT"},
                                                  {"channel": "trades", "instId": "BTC-USDT"}]}
    replies = okx.apply_request(orjson.dumps(req), state, okx_valid, "a4d3ae55")
    assert replies == [
        {"id": "1", "event": "subscribe", "arg": {"channel": "bbo-tbt", "instId": "BTC-USDT"}, "connId": "a4d3ae55"},
        {"id": "1", "event": "subscribe", "arg": {"channel": "trades", "instId": "BTC-USDT"}, "connId": "a4d3ae55"},
    ]
    assert list(state.subs) == [("bbo-tbt", "BTC-USDT"), ("trades", "BTC-USDT")]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{oops", "60012"),
        ('{"op":"subscribe"}', "60012"),
        ('{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}', "60018"),
        ('{"op":"subscribe","args":[{"channel":"books5","instId":"BTC-USD-SWAP"}]}', "60018"),
        ('{"op":"subscribe","args":[{"instId":"BTC-USDT"}]}', "60012"),
        ('{"op":"dance","args":[]}', "60019"),
    ],
)
def test_okx_errors(text: str, code: str) -> None:
    state = okx.SubState()
    [reply] = okx.apply_request(text, state, okx_valid, "c0ffee00")
    assert reply["event"] == "error" and reply["code"] == code and reply["connId"] == "c0ffee00"
    assert isinstance(reply["msg"], str) and reply["msg"]
    assert state.subs == {}


def test_okx_frames() -> None:
    feed = okx.OkxFeed({"BTCUSDT": "BTC-USDT"})
    ev = TradeEvent("okx", "BTCUSDT", 1630048897897, Decimal("42219.90"), Decimal("0.12060306"), "buy", 3)
    [((ch, inst), frame)] = [f for f in feed.frames(ev) if f[0][0] == "trades"]
    assert frame["arg"] == {"channel": "trades", "instId": "BTC-USDT"}
    d = frame["data"][0]
    assert d == {"instId": "BTC-USDT", "tradeId": d["tradeId"], "px": "42219.9", "sz": "0.12060306", "side": "buy",
                 "ts": "1630048897897", "count": "3", "source": "0", "seqId": d["seqId"]}
    assert isinstance(d["tradeId"], str) and isinstance(d["seqId"], int)


def test_replay_line_formats() -> None:
    assert parse_line("wss://ws.okx.com:8443/ws/v5/public <-> 1652459224.5300605") is None
    assert parse_line('wss://x <- 1652459225.29: {"op":"subscribe"}') is None
    ts, text = parse_line('1652459225.5066085: {"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[]}')  # type: ignore[misc]
    assert ts == 1652459225506608
    assert classify(ts, text).key == ("trades", "BTC-USDT")  # type: ignore[union-attr]
    ts, text = parse_line('1723161254087891268 {"stream":"btcusdt@trade","data":{"e":"trade"}}')  # type: ignore[misc]
    assert ts == 1723161254087891
    fr = classify(ts, text)
    assert fr is not None and fr.key == "btcusdt@trade" and fr.data == b'{"e":"trade"}'
    assert classify(ts, '{"event":"subscribe","arg":{"channel":"trades"}}') is None
    assert classify(ts, '{"lastUpdateId":1,"bids":[],"asks":[]}') is None
