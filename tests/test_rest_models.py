"""``order_json`` reads the domain objects directly: the same bytes as the ``OrderOut`` model dumped."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.rest.models import ExactJSON, FillOut, OrderOut, order_json
from shared.ledger import Fill, Order

D = Decimal

ORDERS = [
    Order("u1", "a", "BTCUSDT", "buy", "limit", D("50000.00"), D("0.0010"), "USDT", D("50.000000")),
    Order("u1", "b", "ETHUSDT", "sell", "market", None, D("2.5"), "ETH", D("0"), status="filled",
          filled_quantity=D("2.5"), filled_notional=D("7500.125"), fee=D("0.0025"), fee_asset="USDT",
          exchanges=("okx", "binance"), created_us=1, updated_us=2, version=3),
    Order("u2", "c", "BTCUSDT", "buy", "ioc", D("1E+2"), D("3"), "USDT", D("0.00"), status="expired",
          filled_quantity=D("1"), filled_notional=D("99.999999999"), reason="no liquidity", version=2),
]
FILLS = (Fill("b:1:0", "b", "ETHUSDT", "sell", D("3000.05"), D("1.5"), D("0.0015"), "USDT", "okx", "taker", 5),
         Fill("b:1:1", "b", "ETHUSDT", "sell", D("3000"), D("1.0"), D("0E-8"), "USDT", "binance", "maker", 6))


def model_bytes(order: Order, fills: tuple[Fill, ...] | None) -> bytes:
    out = OrderOut.model_validate(order)
    if fills is None:
        return ExactJSON(out, exclude={"fills"}).body
    out.fills = [FillOut.model_validate(f) for f in fills]
    return ExactJSON(out).body


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o.token_id)
@pytest.mark.parametrize("fills", [None, (), FILLS], ids=["no-fills", "empty", "two-fills"])
def test_order_json_is_the_model_dumped(order: Order, fills: tuple[Fill, ...] | None) -> None:
    got = order_json(order, fills, status_code=201)
    assert got.status_code == 201
    assert got.body == model_bytes(order, fills)
