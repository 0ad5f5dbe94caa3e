"""The pure ledger: hand-computed values, invariants, errors that change nothing."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from shared import ledger
from shared.errors import DomainError
from shared.ledger import Account, Balance, Leg, PairRules

BTC = PairRules("BTCUSDT", "BTC", "USDT", D("0.01"), D("0.00001"), maker_fee=D("0.001"), taker_fee=D("0.002"))
FREE = PairRules("BTCUSDT", "BTC", "USDT", D("0.01"), D("0.00001"))


def funded(**amounts: str) -> Account:
    acct = Account()
    for asset, amt in amounts.items():
        acct = ledger.deposit(acct, asset, D(amt))
    return acct


def place(acct: Account, side: str = "buy", price: str | None = "50000", qty: str = "0.01", type_: str = "limit",
          rules: PairRules = BTC, token: str = "t1") -> tuple[Account, ledger.Order, list[ledger.Event]]:
    return ledger.place(acct, rules, user_id="u1", token_id=token, side=side, type_=type_,  # type: ignore[arg-type]
                        price=None if price is None else D(price), quantity=D(qty), now_us=1)


def test_deposit_adds_exactly() -> None:
    acct = funded(USDT="0.1")
    acct = ledger.deposit(acct, "USDT", D("0.2"))
    assert acct.get("USDT") == Balance(D("0.3"), D(0))
    with pytest.raises(DomainError):
        ledger.deposit(acct, "USDT", D("-1"))


def test_buy_reserves_price_qty_and_taker_fee() -> None:
    acct, order, events = place(funded(USDT="1000"))
    # 50000 * 0.01 * 1.002 = 501
    assert order.reserved == D("501.000") and order.reserve_asset == "USDT"
    assert acct.get("USDT") == Balance(D(1000), D(501)) and acct.available("USDT") == D(499)
    assert events[0]["event"] == "accepted" and events[0]["order"]["status"] == "open"


def test_sell_reserves_base() -> None:
    acct, order, _ = place(funded(BTC="1"), side="sell", qty="0.3")
    assert (order.reserve_asset, order.reserved) == ("BTC", D("0.3"))
    assert acct.available("BTC") == D("0.7")


def test_insufficient_counts_open_reservations() -> None:
    acct, _, _ = place(funded(USDT="1000"), rules=FREE)  # reserves 500
    acct, _, _ = place(acct, rules=FREE, token="t2")  # reserves another 500
    with pytest.raises(DomainError) as e:
        place(acct, rules=FREE, price="0.01", qty="1", token="t3")
    assert e.value.code == "insufficient_balance"


def test_cancel_releases_once() -> None:
    acct, order, _ = place(funded(USDT="1000"))
    acct2, o, ev = ledger.cancel(acct, order, 5)
    assert acct2.get("USDT") == Balance(D(1000), D(0)) and o.status == "cancelled" and o.reserved == 0
    assert ev[0]["event"] == "cancelled"
    with pytest.raises(DomainError) as e:
        ledger.cancel(acct2, o, 6)
    assert e.value.code == "order_not_open"


def test_modify_swaps_reservation() -> None:
    acct, order, _ = place(funded(USDT="1000"), rules=FREE)
    acct2, o, ev = ledger.modify(acct, FREE, order, price=D("40000"), quantity=D("0.02"), now_us=2)
    assert o.reserved == D("800") and acct2.get("USDT").reserved == D(800) and o.version == 2
    assert ev[0]["event"] == "modified"
    with pytest.raises(DomainError):  # 50000 * 0.03 = 1500 > 1000 even after releasing the old 800
        ledger.modify(acct2, FREE, o, price=D("50000"), quantity=D("0.03"), now_us=3)


def test_resting_buy_fill_maker_fee_in_base() -> None:
    acct, order, _ = place(funded(USDT="1000"))
    acct, o, fills, ev = ledger.settle(acct, BTC, order, [Leg(D("50000"), D("0.01"), "okx")], "maker", 9)
    # pays 500 USDT, receives 0.01 BTC minus 0.1% = 0.00999 BTC
    assert acct.get("USDT") == Balance(D(500), D(0))
    assert acct.get("BTC") == Balance(D("0.00999"), D(0))
    assert o.status == "filled" and o.filled_quantity == D("0.01") and o.average_price == D(50000)
    assert o.fee == D("0.00001") and o.fee_asset == "BTC" and o.exchanges == ("okx",)
    assert fills[0].fee == D("0.00001") and fills[0].liquidity == "maker" and ev[0]["event"] == "filled"
    ledger.check_invariants(acct, [o])


def test_sell_fill_at_better_price_taker_fee_in_quote() -> None:
    acct, order, _ = place(funded(BTC="1"), side="sell", qty="0.5", price="60000")
    acct, o, _, _ = ledger.settle(acct, BTC, order, [Leg(D("60010.5"), D("0.5"), "binance")], "taker", 9)
    # receives 30005.25 USDT minus 0.2% (60.0105) = 29945.2395
    assert acct.get("USDT") == Balance(D("29945.2395"), D(0))
    assert acct.get("BTC") == Balance(D("0.5"), D(0))
    assert o.fee == D("60.0105")


def test_partial_market_fill_expires_remainder_and_releases_all() -> None:
    acct = funded(USDT="1000")
    acct, order, _ = place(acct, price=None, qty="0.03", type_="market", rules=FREE)
    assert order.reserved == D(1000)  # a market buy locks what is available
    legs = [Leg(D("30000"), D("0.01"), "okx"), Leg(D("30001"), D("0.01"), "binance")]
    acct, o, fills, ev = ledger.settle(acct, FREE, order, legs, "taker", 9)
    assert o.status == "expired" and o.filled_quantity == D("0.02") and o.filled_notional == D("600.01")
    assert o.average_price == D("30000.5") and o.exchanges == ("okx", "binance")
    assert acct.get("USDT") == Balance(D("399.99"), D(0)) and acct.get("BTC").total == D("0.02")
    assert len(fills) == 2 and ev[0]["event"] == "expired"


def test_settle_guards() -> None:
    acct, order, _ = place(funded(USDT="1000"), rules=FREE)
    with pytest.raises(DomainError) as e:
        ledger.settle(acct, FREE, order, [Leg(D("50000"), D("0.005"), "okx")], "maker", 1)
    assert e.value.code == "partial_limit"
    with pytest.raises(DomainError) as e:
        ledger.settle(acct, FREE, order, [Leg(D("60000"), D("0.01"), "okx")], "maker", 1)
    assert e.value.code == "overspend"
    _, closed, _ = ledger.expire(acct, order, 2)[0:3]
    with pytest.raises(DomainError):
        ledger.settle(acct, FREE, closed, [Leg(D("50000"), D("0.01"), "okx")], "maker", 1)


def test_invariant_check_and_hash_roundtrip() -> None:
    acct, order, _ = place(funded(USDT="1000.123"))
    ledger.check_invariants(acct, [order])
    with pytest.raises(DomainError):
        ledger.check_invariants(acct, [])
    raw = {k.encode(): v.encode() for k, v in acct.to_hash().items()}
    assert Account.from_hash(raw) == acct
    assert ledger.Order.from_dict(order.to_dict()) == order


def test_inputs_never_mutated() -> None:
    acct = funded(USDT="10")
    before = dict(acct.balances)
    with pytest.raises(DomainError):
        place(acct)
    assert dict(acct.balances) == before
