from decimal import Decimal

import pytest

from gateway.services.decimals import to_decimal
from shared import names
from shared.money import fmt
from shared.schema import BBO, Book, FeedStatus, SchemaError, Trade, decode, encode


def test_roundtrip_keeps_exact_digits() -> None:
    msgs = [
        BBO("binance", "BTCUSDT", Decimal("64000.10000000"), Decimal("1.5"), Decimal("64000.2"), Decimal("0.00000001"),
            7, 1_700_000_000_000_000, 1_700_000_000_000_123),
        Book("okx", "ETHUSDT", ((Decimal("3000.1"), Decimal("2")),), ((Decimal("3000.2"), Decimal("1")),), 9, 1, 2),
        Trade("okx", "SOLUSDT", "130639474", Decimal("150.123"), Decimal("0.1"), "sell", 1, 2),
        FeedStatus("okx", "down", "closed 1006", 3),
    ]
    for m in msgs:
        assert decode(encode(m)) == m
    assert b'"64000.10000000"' in encode(msgs[0])


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"type":"nope"}', b'{"type":"trade","price":1}',
                                 b'{"type":"bbo","exchange":"x"}', b'{"type":"trade","exchange":"okx","symbol":"S",'
                                 b'"trade_id":"1","price":"x","size":"1","side":"buy","ts_event_us":1,"ts_recv_us":1}'])
def test_decode_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode(raw)


def test_names_are_built_in_one_place() -> None:
    assert names.md_channel("trade", "okx", "BTCUSDT") == "md:trade:okx:BTCUSDT"
    assert names.md_last_key("bbo", "binance", "ETHUSDT") == "md:last:bbo:binance:ETHUSDT"
    assert names.status_channel("okx") != names.status_key("okx")


@pytest.mark.parametrize("v", ["NaN", "Infinity", "-inf", "1e400", None, True, "", "abc", [1], {"a": 1}, float("nan")])
def test_parse_decimal_rejects(v: object) -> None:
    with pytest.raises(ValueError):
        to_decimal(v)


def test_parse_decimal_and_fmt() -> None:
    assert to_decimal(0.1) == Decimal("0.1")
    assert to_decimal("50000") == Decimal(50000)
    assert fmt(Decimal("0.00010")) == "0.0001"
    assert fmt(Decimal("1E+2")) == "100"
    assert fmt(Decimal("0E-8")) == "0"


def test_feed_status_shard_round_trips_and_stays_optional() -> None:
    plain = FeedStatus("okx", "up", "", 5)
    assert b"shard" not in encode(plain) and decode(encode(plain)) == plain
    sharded = FeedStatus("okx", "down", "shard 1/2: closed", 6, "1/2")
    assert decode(encode(sharded)) == sharded


def test_an_exchange_with_shards_is_live_only_when_every_shard_is() -> None:
    from shared.feed_health import FeedHealth

    S = 1_000_000
    h = FeedHealth(stale_after_s=5)
    h.update(FeedStatus("binance", "up", "", 0, "1/2"), 0)
    h.update(FeedStatus("binance", "up", "", 0, "2/2"), 0)
    assert h.live(1 * S) == ("binance",)
    h.update(FeedStatus("binance", "down", "closed", 0, "2/2"), 2 * S)
    h.update(FeedStatus("binance", "up", "", 0, "1/2"), 3 * S)  # the other shard's heartbeat does not hide it
    assert h.live(3 * S) == () and h.heard()["binance"][0] == "down"
    h.update(FeedStatus("binance", "up", "", 0, "2/2"), 4 * S)
    assert h.live(4 * S) == ("binance",)
    h.update(FeedStatus("binance", "up", "", 0, "1/2"), 9 * S)  # shard 2/2 silent since 4 s: stale
    assert h.live(10 * S) == () and h.heard()["binance"][1] == 4 * S
    h.update(FeedStatus("binance", "up", "", 0, "1/2"), 400 * S)  # 2/2 gone for longer than FORGET_S
    assert h.live(400 * S) == ("binance",)
