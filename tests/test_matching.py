"""The pure matching rules, with plain inputs."""

from __future__ import annotations

from decimal import Decimal as D

from shared.best_touch import best_touch
from shared.ledger import Order
from shared.matching import ExchangeView, decide_arrival, decide_resting, walk
from shared.schema import BBO, Book

LOT = D("0.001")


def bbo(ex: str, bid: str, ask: str, bsz: str = "1", asz: str = "1") -> BBO:
    return BBO(ex, "BTCUSDT", D(bid), D(bsz), D(ask), D(asz), 1, 1, 1)


def book(ex: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> Book:
    return Book(ex, "BTCUSDT", tuple((D(p), D(s)) for p, s in bids), tuple((D(p), D(s)) for p, s in asks), 1, 1, 1)


def order(side: str = "buy", price: str | None = "100", qty: str = "1", type_: str = "limit",
          reserved: str = "1000") -> Order:
    return Order("u", "t", "BTCUSDT", side, type_, None if price is None else D(price), D(qty),  # type: ignore[arg-type]
                 "USDT" if side == "buy" else "BTC", D(reserved))


QUOTES = [bbo("binance", "99", "101"), bbo("okx", "99.5", "100.5")]
TOUCH = best_touch("BTCUSDT", QUOTES, ["binance", "okx"])


def test_resting_fills_in_full_at_limit_price_when_crossed() -> None:
    d = decide_resting(order(price="100.5"), TOUCH)
    assert d.outcome == "fill" and d.liquidity == "maker"
    assert [(lg.price, lg.quantity, lg.exchange) for lg in d.legs] == [(D("100.5"), D(1), "okx")]
    assert decide_resting(order(price="100.4"), TOUCH).outcome == "rest"
    sell = decide_resting(order(side="sell", price="99.2"), TOUCH)
    assert sell.outcome == "fill" and sell.legs[0].price == D("99.2") and sell.legs[0].exchange == "okx"
    assert decide_resting(order(side="sell", price="99.6"), TOUCH).outcome == "rest"


def test_marketable_on_arrival_fills_at_touch() -> None:
    d = decide_arrival(order(price="105"), TOUCH, [], LOT)
    assert d.outcome == "fill" and d.liquidity == "taker" and d.legs[0].price == D("100.5")
    s = decide_arrival(order(side="sell", price="90"), TOUCH, [], LOT)
    assert s.legs[0].price == D("99.5") and s.legs[0].exchange == "okx"
    assert decide_arrival(order(price="100"), TOUCH, [], LOT).outcome == "rest"


def test_stale_exchange_is_ignored() -> None:
    only_binance = best_touch("BTCUSDT", QUOTES, ["binance"])
    assert decide_resting(order(price="100.5"), only_binance).outcome == "rest"


def views() -> list[ExchangeView]:
    return [
        ExchangeView("binance", bbo("binance", "99", "101", asz="0.5"),
                     book("binance", [("99", "1"), ("98", "5")], [("101", "0.7"), ("102", "5")])),
        ExchangeView("okx", bbo("okx", "99.5", "100.5", asz="0.2", bsz="0.3"),
                     book("okx", [("99.5", "0.3"), ("97", "2")], [("100.5", "0.2"), ("103", "1")])),
    ]


def test_ioc_walks_both_books_best_first_and_stops_at_limit() -> None:
    d = decide_arrival(order(price="101", qty="1", type_="ioc"), TOUCH, views(), LOT)
    # okx 100.5 x 0.2, then binance 101 x 0.5 (BBO top replaces the book's 0.7); 102 is beyond the limit
    assert [(lg.price, lg.quantity, lg.exchange) for lg in d.legs] == [
        (D("100.5"), D("0.2"), "okx"), (D("101"), D("0.5"), "binance")]


def test_market_sell_walks_bids() -> None:
    d = decide_arrival(order(side="sell", price=None, qty="2", type_="market", reserved="2"), TOUCH, views(), LOT)
    assert [(lg.price, lg.quantity) for lg in d.legs] == [(D("99.5"), D("0.3")), (D("99"), D("1")),
                                                          (D("98"), D("0.7"))]


def test_market_buy_limited_by_funds_and_lot() -> None:
    d = decide_arrival(order(price=None, qty="10", type_="market", reserved="100"), TOUCH, views(), LOT)
    # 0.2 @ 100.5 = 20.1; then 79.9 / 101 = 0.791... -> floor to lot 0.791 but only 0.5 shown; then 102:
    # 79.9 - 50.5 = 29.4 / 102 = 0.288... -> 0.288
    assert [(lg.price, lg.quantity) for lg in d.legs] == [(D("100.5"), D("0.2")), (D("101"), D("0.5")),
                                                          (D("102"), D("0.288"))]
    spent = sum(lg.price * lg.quantity for lg in d.legs)
    assert spent <= 100


def test_market_without_live_price_rejected_ioc_expired() -> None:
    dead = best_touch("BTCUSDT", QUOTES, [])
    assert decide_arrival(order(price=None, type_="market"), dead, [], LOT).outcome == "reject"
    assert decide_arrival(order(type_="ioc"), dead, [], LOT).outcome == "expire"
    assert decide_arrival(order(price="50", type_="ioc"), TOUCH, views(), LOT).outcome == "expire"


def test_walk_floors_to_lot() -> None:
    legs = walk(order(price="200", qty="1", type_="ioc"), [ExchangeView("okx", bbo("okx", "1", "100", asz="0.0005"), None)],
                LOT)
    assert legs == ()
