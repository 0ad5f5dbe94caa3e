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
