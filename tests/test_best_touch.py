from decimal import Decimal as D

from shared.best_touch import best_touch
from shared.feed_health import FeedHealth
from shared.schema import BBO, FeedStatus


def q(ex: str, bid: str, bsz: str, ask: str, asz: str, t: int = 1) -> BBO:
    return BBO(ex, "BTCUSDT", D(bid), D(bsz), D(ask), D(asz), 1, t, t)


def test_higher_bid_lower_ask_across_exchanges() -> None:
    t = best_touch("BTCUSDT", [q("binance", "100", "1", "101", "2"), q("okx", "100.5", "3", "101.5", "1")],
                   ["binance", "okx"])
    assert (t.bid_px, t.bid_sz, t.bid_exchanges) == (D("100.5"), D("3"), ("okx",))
    assert (t.ask_px, t.ask_sz, t.ask_exchanges) == (D("101"), D("2"), ("binance",))
    assert t.live == ("binance", "okx") and not t.crossed


def test_tie_names_both_and_sums_size() -> None:
    t = best_touch("BTCUSDT", [q("binance", "100", "1", "101", "2"), q("okx", "100", "3", "101", "1")],
                   ["binance", "okx"])
    assert t.bid_exchanges == ("okx", "binance") and t.bid_sz == D(4)
    assert t.ask_exchanges == ("binance", "okx") and t.ask_sz == D(3)


def test_stale_exchange_left_out_and_cross_reported() -> None:
    quotes = [q("binance", "102", "1", "103", "1"), q("okx", "100", "1", "101", "1")]
    t = best_touch("BTCUSDT", quotes, ["okx"])
    assert t.bid_px == D(100) and t.live == ("okx",)
    both = best_touch("BTCUSDT", quotes, ["okx", "binance"])
    assert both.crossed and both.bid_exchanges == ("binance",) and both.ask_exchanges == ("okx",)
    none = best_touch("BTCUSDT", quotes, [])
    assert none.bid_px is None and none.ask_px is None and none.live == ()


def test_feed_health_heartbeat_and_states() -> None:
    h = FeedHealth(stale_after_s=2)
    h.update(FeedStatus("okx", "up", "", 0), now_us=0)
    h.update(FeedStatus("binance", "down", "closed", 0), now_us=0)
    assert h.live(1_000_000) == ("okx",)
    assert h.live(2_500_000) == ()  # no heartbeat: stale
    h.update(FeedStatus("binance", "up", "", 0), now_us=2_600_000)
    assert h.live(2_700_000) == ("binance",)
