from __future__ import annotations

from decimal import Decimal as D

from shared.klines import INTERVALS_US, KlineBuilder

S = 1_000_000


def test_one_candle_ohlcv_from_trades() -> None:
    b = KlineBuilder(INTERVALS_US["10s"])
    assert b.add(D("100.5"), D("1"), 20 * S + 1, 20 * S + 5) == []
    b.add(D("101.25"), D("0.5"), 21 * S, 21 * S + 7)
    b.add(D("99.75"), D("2"), 25 * S, 25 * S)
    b.add(D("100.00"), D("0.25"), 29 * S + 999_999, 30 * S)
    c = b.current
    assert c is not None
    assert (c.open_time_us, c.close_time_us) == (20 * S, 30 * S - 1)
    assert (c.open, c.high, c.low, c.close) == (D("100.5"), D("101.25"), D("99.75"), D("100.00"))
    assert c.volume == D("3.75") and c.trades == 4 and not c.closed
    assert (c.ts_event_us, c.ts_recv_us) == (29 * S + 999_999, 30 * S)


def test_boundary_trade_opens_next_bucket_and_closes_previous() -> None:
    b = KlineBuilder(INTERVALS_US["1s"])
    b.add(D("10"), D("1"), 5 * S + 999_999, 0)
    closed = b.add(D("11"), D("2"), 6 * S, 0)  # exactly on the boundary: belongs to the next bucket
    assert len(closed) == 1
    assert closed[0].closed and closed[0].open_time_us == 5 * S and closed[0].close == D("10")
    assert b.current is not None and b.current.open_time_us == 6 * S and b.current.open == D("11")
    assert list(b.history) == closed


def test_empty_intervals_are_flat_at_previous_close() -> None:
    b = KlineBuilder(INTERVALS_US["1s"])
    b.add(D("10"), D("1"), 1 * S, 0)
    b.add(D("12"), D("1"), 1 * S + 500_000, 0)
    closed = b.add(D("9"), D("3"), 4 * S + 1, 0)
    assert [c.open_time_us for c in closed] == [1 * S, 2 * S, 3 * S]
    flat = closed[1]
    assert (flat.open, flat.high, flat.low, flat.close, flat.volume, flat.trades) == (
        D("12"), D("12"), D("12"), D("12"), D(0), 0)
    assert all(c.closed for c in closed)
    assert b.current is not None and (b.current.open, b.current.low, b.current.trades) == (D("9"), D("9"), 1)


def test_timer_closes_buckets_and_leaves_a_flat_candle_open() -> None:
    b = KlineBuilder(INTERVALS_US["1s"])
    assert b.close_until(100 * S) == []  # nothing seen yet: no candle at all
    b.add(D("5"), D("1"), 10 * S + 10, 0)
    assert b.close_until(10 * S + 999_999) == []
    closed = b.close_until(12 * S + 300_000)
    assert [c.open_time_us for c in closed] == [10 * S, 11 * S]
    assert closed[1].volume == 0 and closed[1].close == D("5")
    cur = b.current
    assert cur is not None and cur.open_time_us == 12 * S and cur.trades == 0 and cur.close == D("5")
    # the first trade in a flat bucket replaces the placeholder prices
    b.add(D("7"), D("2"), 12 * S + 400_000, 0)
    cur = b.current
    assert (cur.open, cur.high, cur.low, cur.close, cur.volume, cur.trades) == (D("7"), D("7"), D("7"), D("7"), D("2"), 1)


def test_late_trade_is_left_out_and_counted() -> None:
    b = KlineBuilder(INTERVALS_US["1s"])
    b.add(D("5"), D("1"), 10 * S, 0)
    b.close_until(11 * S)
    b.add(D("6"), D("1"), 10 * S + 5, 0)
    assert b.late == 1 and b.history[-1].volume == D("1")


def test_history_is_bounded_and_long_gaps_are_capped() -> None:
    b = KlineBuilder(INTERVALS_US["1s"], history=3)
    b.add(D("1"), D("1"), 0, 0)
    closed = b.add(D("2"), D("1"), 1000 * S, 0)
    assert len(closed) == 4  # the real candle plus 3 flat ones just before the new bucket
    assert [c.open_time_us for c in closed[1:]] == [997 * S, 998 * S, 999 * S]
    assert [c.open_time_us for c in b.history] == [997 * S, 998 * S, 999 * S]


def test_five_minute_alignment_on_epoch() -> None:
    b = KlineBuilder(INTERVALS_US["5m"])
    b.add(D("1"), D("1"), 1_700_000_123_456_789, 0)
    assert b.current is not None
    assert b.current.open_time_us == 1_700_000_100_000_000
    assert b.current.close_time_us == 1_700_000_399_999_999
