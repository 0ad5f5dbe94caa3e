"""``plain_place`` (the hot path's order body validation) accepts nothing ``PlaceOrderIn.model_validate`` would refuse
and gives the same values, digit for digit; what it declines goes to ``model_validate``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, get_args

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.services import requests
from gateway.services.requests import PlaceOrderIn, plain_place
from shared import ledger

AMOUNTS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.sampled_from(["1", "0", "-1", "0.001", " 2.50 ", "1E+2", "1e-19", "abc", "", "NaN", "Infinity", "1" * 70,
                     "10000.00", "\u00a01", "0x10", "+5", ".5", "5."]),
    st.text(max_size=8),
)
TEXT = st.one_of(st.none(), st.integers(), st.sampled_from(["a", "my-order-1", "x" * 64, "x" * 65, "bad id", "é",
                                                            "a\n", "BTCUSDT", "y" * 40, "y" * 41, ""]),
                 st.text(max_size=70))
SIDE = st.one_of(st.sampled_from(["buy", "sell", "BUY", "", "hold"]), st.none(), st.integers())
TYPE = st.one_of(st.sampled_from(["limit", "market", "ioc", "LIMIT", "stop"]), st.none(), st.booleans())
BODY = st.fixed_dictionaries({}, optional={"token_id": TEXT, "symbol": TEXT, "side": SIDE, "price": AMOUNTS,
                                           "quantity": AMOUNTS, "type": TYPE, "extra": st.integers()})


def _same(a: PlaceOrderIn, b: PlaceOrderIn) -> None:
    for f in PlaceOrderIn.model_fields:
        x, y = getattr(a, f), getattr(b, f)
        assert type(x) is type(y) and x == y, f
        if isinstance(x, Decimal):
            assert x.as_tuple() == y.as_tuple(), f


@settings(max_examples=400, deadline=None)
@given(BODY)
def test_what_it_accepts_the_model_accepts_with_the_same_values(body: dict[str, Any]) -> None:
    quick = plain_place(body)
    if quick is None:
        return
    _same(quick, PlaceOrderIn.model_validate(body))


def test_the_usual_bodies_take_the_plain_path() -> None:
    for body in ({"token_id": "t1", "symbol": "BTCUSDT", "side": "buy", "price": "10000.00", "quantity": "0.001"},
                 {"token_id": "t2", "symbol": "BTCUSDT", "side": "sell", "price": Decimal("64000.5"),
                  "quantity": 1, "type": "ioc"},
                 {"token_id": "t3", "symbol": "ETHUSDT", "side": "buy", "quantity": "2", "type": "market",
                  "price": None}):
        quick = plain_place(body)
        assert quick is not None
        _same(quick, PlaceOrderIn.model_validate(body))


def test_what_it_declines_the_model_decides() -> None:
    for body in ([], {"token_id": "t", "symbol": "X", "side": "buy", "quantity": "0"},
                 {"token_id": "t", "symbol": "X", "side": "buy", "quantity": "1", "colour": "red"}):
        assert plain_place(body) is None
        try:
            PlaceOrderIn.model_validate(body)
        except ValidationError:
            continue
        raise AssertionError(body)


def test_its_sides_and_types_are_the_ledger_s() -> None:
    assert set(requests._SIDES) == set(get_args(ledger.Side))
    assert set(requests._TYPES) == set(get_args(ledger.OrderType))
