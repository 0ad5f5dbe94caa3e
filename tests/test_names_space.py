"""Spaces (``settings.space``): every market-data, ledger, order-event and matcher-shard name is prefixed, users
and logins are not; the live space is unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared import names
from shared.settings import SettingsError, load_settings


@pytest.fixture
def replay_space() -> Iterator[None]:
    names.set_space("replay")
    try:
        yield
    finally:
        names.set_space("")


def test_live_names_are_unchanged() -> None:
    assert names.space() == ""
    assert names.md_channel("bbo", "okx", "BTCUSDT") == "md:bbo:okx:BTCUSDT"
    assert names.balance_key("42") == "{u:42}:bal"
    assert names.intake_stream(0) == "matcher:{m:0}:intake"
    assert names.open_scan_pattern() == "{u:*}:open"


def test_replay_space_prefixes_market_data_and_ledger(replay_space: None) -> None:
    ks = names.Keyspace(cluster=True, partitions=16)
    assert names.space() == "replay"
    assert names.md_channel("bbo", "okx", "BTCUSDT") == "replay:md:bbo:okx:BTCUSDT"
    assert names.md_last_key("bbo", "okx", "BTCUSDT") == "replay:md:last:bbo:okx:BTCUSDT"
    assert names.status_key("okx") == "replay:md:feed:okx"
    assert names.status_channel("okx") == "replay:md:status:okx"
    assert ks.md_channel("trade", "binance", "BTCUSDT").startswith("replay:md:{p")
    assert ks.slot_key(ks.md_channel("trade", "binance", "BTCUSDT")) .startswith("replay:md:{p")
    for key in (names.balance_key("42"), names.order_key("42", "t1"), names.orders_index_key("42"),
                names.open_orders_key("42"), names.fills_key("42")):
        assert key.startswith("replay:{u:42}:")
    assert names.user_events_channel("42") == "replay:orders:events:{u:42}"
    assert names.user_from_open_key("replay:{u:42}:open") == "42"
    with pytest.raises(ValueError):
        names.user_from_open_key("{u:42}:open")  # a live key is not this space's
    assert names.open_scan_pattern() == "replay:{u:*}:open"
    assert names.intake_stream(1).startswith("replay:matcher:{m:1}")
    assert names.lease_key(1).startswith("replay:") and names.shard_open_key(1).startswith("replay:")
    # shared by both spaces: one login trades in either
    assert names.user_key("42") == "user:{u:42}"
    assert names.username_key("Bob") == "user:byname:bob"
    assert names.MATCHER_ALIVE_KEY == "matcher:alive"


def test_space_setting_is_validated() -> None:
    assert load_settings(env={"SR_SPACE": "replay"}).space == "replay"
    assert load_settings(env={}).space == ""
    for bad in ("Replay", "re play", "x" * 17, "1abc", "a:b"):
        with pytest.raises(SettingsError, match="space"):
            load_settings(env={"SR_SPACE": bad})
    with pytest.raises(ValueError):
        names.set_space("a:b")
