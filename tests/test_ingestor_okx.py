"""OKX parser: doc-shaped frames field by field, the real cryptofeed capture, events and bad frames."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from ingestor.okx import OkxParser, subscribe_requests
from ingestor.parsing import Control, FrameError
from shared.schema import BBO, Book, Trade
from tests.ingestor_helpers import doc_settings

RECV = 1_700_000_000_123_456


@pytest.fixture
def parser(tmp_path: Path) -> OkxParser:
    return OkxParser(doc_settings(tmp_path))


def push(channel: str, inst: str, *data: dict) -> bytes:
    return orjson.dumps({"arg": {"channel": channel, "instId": inst}, "data": list(data)})


BOOKS5 = {
    "asks": [["64073.1", "1.07909367", "0", "8"], ["64073.2", "0.5", "0", "1"], ["64074", "2", "0", "3"],
             ["64075.5", "0.01", "0", "1"], ["64080", "4.2", "0", "6"]],
    "bids": [["64073", "0.3", "0", "2"], ["64072.9", "1.1", "0", "4"], ["64070", "0.25", "0", "1"],
             ["64069.9", "3", "0", "2"], ["64060", "10", "0", "9"]],
    "instId": "BTC-USDT", "ts": "1786538744703", "seqId": 79706756139,
}


def test_subscribe_requests_one_per_channel_with_every_pair(tmp_path: Path) -> None:
    reqs = [orjson.loads(r) for r in subscribe_requests(doc_settings(tmp_path))]
    assert [r["op"] for r in reqs] == ["subscribe"] * 3
    assert [r["id"] for r in reqs] == ["1", "2", "3"]
    assert reqs[0]["args"] == [{"channel": "bbo-tbt", "instId": i} for i in ("BTC-USDT", "BNB-USDT", "BNB-BTC")]
    assert {a["channel"] for r in reqs[1:] for a in r["args"]} == {"books5", "trades"}


def test_books5_as_documented(parser: OkxParser) -> None:
    [m] = parser.parse(push("books5", "BTC-USDT", BOOKS5), RECV)
    assert isinstance(m, Book)
    assert (m.exchange, m.symbol, m.seq) == ("okx", "BTCUSDT", 79706756139)
    assert m.asks[0] == (Decimal("64073.1"), Decimal("1.07909367"))
    assert m.bids == tuple((Decimal(p), Decimal(s)) for p, s, _, _ in BOOKS5["bids"])
    assert len(m.asks) == 5
    assert (m.ts_event_us, m.ts_recv_us) == (1786538744703000, RECV)


def test_bbo_tbt_as_documented(parser: OkxParser) -> None:
    d = {"asks": [["64073.1", "1.07909367", "0", "8"]], "bids": [["64073", "0.3", "0", "2"]],
         "ts": "1786538744703", "seqId": 79706756140}
    [m] = parser.parse(push("bbo-tbt", "BTC-USDT", d), RECV)
    assert m == BBO("okx", "BTCUSDT", Decimal("64073"), Decimal("0.3"), Decimal("64073.1"), Decimal("1.07909367"),
                    79706756140, 1786538744703000, RECV)


def test_trades_as_documented(parser: OkxParser) -> None:
    d = {"instId": "BTC-USDT", "tradeId": "130639474", "px": "42219.9", "sz": "0.12060306", "side": "buy",
         "ts": "1630048897897", "count": "3", "source": "0", "seqId": 1234}
    d2 = {**d, "tradeId": "130639475", "side": "sell", "px": "42219.8"}
    m1, m2 = parser.parse(push("trades", "BTC-USDT", d, d2), RECV)  # type: ignore[misc]
    assert m1 == Trade("okx", "BTCUSDT", "130639474", Decimal("42219.9"), Decimal("0.12060306"), "buy",
                       1630048897897000, RECV)
    assert (m2.trade_id, m2.side, m2.price) == ("130639475", "sell", Decimal("42219.8"))


@pytest.mark.parametrize(("frame", "expected"), [
    ("pong", Control("pong")),
    (b'{"id":"1","event":"subscribe","arg":{"channel":"books5","instId":"BTC-USDT"},"connId":"a4d3ae55"}',
     Control("subscribed", "books5 BTC-USDT")),
    (b'{"event":"error","code":"60012","msg":"Invalid request: {\\"op\\": \\"subscribe\\"}","connId":"a4d3ae55"}',
     Control("error", '60012: Invalid request: {"op": "subscribe"}')),
    (b'{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade.",'
     b'"connId":"a4d3ae55"}',
     Control("reconnect", "notice 64008: The connection will soon be closed for a service upgrade.")),
])
def test_events(parser: OkxParser, frame: str | bytes, expected: Control) -> None:
    assert parser.parse(frame, RECV) == expected


def test_channel_conn_count_and_other_notices_are_not_errors(parser: OkxParser) -> None:
    c = parser.parse(b'{"event":"channel-conn-count","channel":"orders","connCount":"2","connId":"abcd1234"}', RECV)
    assert isinstance(c, Control) and c.kind == "info"
    c = parser.parse(b'{"event":"notice","code":"64099","msg":"something else"}', RECV)
    assert isinstance(c, Control) and c.kind == "info"


GOOD_TRADE = {"instId": "BTC-USDT", "tradeId": "1", "px": "100", "sz": "1", "side": "buy", "ts": "1630048897897"}
GOOD_BBO = {"asks": [["100.1", "1", "0", "1"]], "bids": [["100", "1", "0", "1"]], "ts": "1", "seqId": 1}


@pytest.mark.parametrize(("frame", "reason"), [
    (b"ping?", "bad_json"),
    (b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"px":"1"', "bad_json"),
    (b'"pong"', "bad_json"),
    (push("trades", "ETH-USDT", GOOD_TRADE), "unknown_symbol"),
    (push("trades", "BTC-USDT-SWAP", GOOD_TRADE), "unknown_symbol"),
    (push("trades", "BTC-USDT", {**GOOD_TRADE, "instId": "BNB-USDT"}), "unknown_symbol"),
    (push("tickers", "BTC-USDT", GOOD_TRADE), "unknown_channel"),
    (push("trades", "BTC-USDT", {**GOOD_TRADE, "px": "NaN"}), "bad_number"),
    (push("trades", "BTC-USDT", {**GOOD_TRADE, "px": "-Infinity"}), "bad_number"),
    (push("trades", "BTC-USDT", {**GOOD_TRADE, "sz": "-1"}), "bad_number"),
    (push("trades", "BTC-USDT", {**GOOD_TRADE, "side": "short"}), "bad_field"),
    (push("trades", "BTC-USDT", {**GOOD_TRADE, "tradeId": 5}), "bad_field"),
    (push("trades", "BTC-USDT", {**GOOD_TRADE, "ts": "-1"}), "bad_field"),
    (push("trades", "BTC-USDT", {k: v for k, v in GOOD_TRADE.items() if k != "px"}), "malformed"),
    (push("bbo-tbt", "BTC-USDT", {**GOOD_BBO, "bids": [["100.1", "1", "0", "1"]]}), "crossed"),
    (push("bbo-tbt", "BTC-USDT", {**GOOD_BBO, "bids": []}), "one_sided"),
    (push("bbo-tbt", "BTC-USDT", {**GOOD_BBO, "asks": [["0", "1", "0", "1"]]}), "bad_number"),
    (push("books5", "BTC-USDT", {**BOOKS5, "bids": [["64074", "1", "0", "1"]]}), "crossed"),
    (push("books5", "BTC-USDT", {**BOOKS5, "asks": list(reversed(BOOKS5["asks"]))}), "unsorted"),
    (push("books5", "BTC-USDT", {**BOOKS5, "asks": "none"}), "bad_field"),
    (b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":{"px":"1"}}', "bad_field"),
    (b'{"arg":{"channel":"trades"},"data":[]}', "malformed"),
    (b'{"data":[]}', "malformed"),
])
def test_bad_frames_are_rejected_with_a_reason(parser: OkxParser, frame: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as ei:
        parser.parse(frame, RECV)
    assert ei.value.reason == reason


def test_a_frame_with_one_bad_item_is_dropped_whole(parser: OkxParser) -> None:
    with pytest.raises(FrameError):
        parser.parse(push("trades", "BTC-USDT", GOOD_TRADE, {**GOOD_TRADE, "sz": "oops"}), RECV)


@pytest.mark.captures
def test_real_capture_trades(captures_dir: Path, tmp_path: Path) -> None:
    parser = OkxParser(doc_settings(tmp_path))
    trades: list[tuple[dict, Trade]] = []
    reasons: dict[str, int] = {}
    controls: list[Control] = []
    for line in (captures_dir / "cryptofeed" / "OKX.ws.1.0").read_text().splitlines()[1:]:
        if " <- " in line:
            continue  # what the client sent
        ts, _, raw = line.partition(": ")
        recv_us = int(Decimal(ts) * 1_000_000)
        try:
            res = parser.parse(raw, recv_us)
        except FrameError as e:
            reasons[e.reason] = reasons.get(e.reason, 0) + 1
            continue
        if isinstance(res, Control):
            controls.append(res)
            continue
        items = orjson.loads(raw)["data"]
        assert len(items) == len(res)
        for d, m in zip(items, res, strict=True):
            assert isinstance(m, Trade)
            trades.append((d, m))
    assert len(trades) >= 69
    for d, m in trades:
        assert (m.exchange, m.symbol, m.trade_id, m.side) == ("okx", "BTCUSDT", d["tradeId"], d["side"])
        assert (m.price, m.size, m.ts_event_us) == (Decimal(d["px"]), Decimal(d["sz"]), int(d["ts"]) * 1000)
    assert trades[0][1] == Trade("okx", "BTCUSDT", "338476307", Decimal("30236"), Decimal("0.0002"), "buy",
                                 1652459224818000, trades[0][1].ts_recv_us)
    assert controls and all(c.kind == "subscribed" for c in controls)
    # tickers and 400-level books are channels we do not subscribe to; futures/swaps are not configured.
    assert set(reasons) == {"unknown_channel", "unknown_symbol"}
