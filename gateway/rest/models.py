"""What the REST API answers: response models built from the services' domain objects, written once.

Each route builds its response model from the domain objects (pydantic validates it there, so what is sent is
what the OpenAPI document promises) and answers ``ExactJSON(model)``: orjson with every decimal an exact JSON
number (``gateway.jsonio.dumps``). FastAPI's own serializer would write decimals as strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.responses import Response

from gateway import jsonio
from gateway.services.decimals import Dec
from gateway.services.trading import Page
from shared.ledger import Balance, Fill, Order, Side, Status
from shared.ledger import OrderType as OrderKind


class OutModel(BaseModel):
    """Base of response bodies: read from the domain objects' attributes."""

    model_config = ConfigDict(extra="ignore", from_attributes=True)


class ExactJSON(Response):
    """A response model (or plain JSON-ready data) as JSON with exact decimal numbers."""

    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None,
                 background: BackgroundTask | None = None, *, exclude: Any = None, as_written: bool = False) -> None:
        self._exclude = exclude
        self._as_written = as_written
        super().__init__(content, status_code, headers, None, background)

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            content = content.model_dump(exclude=self._exclude)
        return jsonio.dumps(content, as_written=self._as_written)


class FillOut(OutModel):
    fill_id: str
    token_id: str
    symbol: str
    side: Side
    price: Dec
    quantity: Dec
    fee: Dec
    fee_asset: str
    exchange: str = Field(description="the exchange whose price was taken")
    liquidity: Literal["maker", "taker"]
    ts_us: int

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"fill_id": "b1:1:0", "token_id": "b1", "symbol": "BTCUSDT", "side": "buy", "price": 50000,
         "quantity": 0.01, "fee": 0.00001, "fee_asset": "BTC", "exchange": "okx", "liquidity": "maker",
         "ts_us": 1795702242224772}]})


ORDER_EXAMPLE: dict[str, Any] = {
    "token_id": "my-order-1", "symbol": "BTCUSDT", "side": "buy", "type": "limit", "price": 50000,
    "quantity": 0.01, "status": "open", "filled_quantity": 0, "filled_notional": 0, "average_price": None,
    "fee": 0, "fee_asset": "BTC", "reserve_asset": "USDT", "reserved": 500, "exchanges": [],
    "created_us": 1795702242215964, "updated_us": 1795702242215964, "version": 1, "reason": ""}


class OrderOut(OutModel):
    token_id: str
    symbol: str
    side: Side
    type: OrderKind
    price: Dec | None = Field(description="null for a market order")
    quantity: Dec
    status: Status
    filled_quantity: Dec
    filled_notional: Dec = Field(description="quote amount exchanged")
    average_price: Dec | None
    fee: Dec
    fee_asset: str
    reserve_asset: str
    reserved: Dec = Field(description="what the order locks now (0 once closed)")
    exchanges: list[str] = Field(description="the exchanges whose prices it took")
    created_us: int
    updated_us: int
    version: int
    reason: str = Field(description="why it expired or was rejected")
    fills: list[FillOut] | None = Field(default=None, description="market and ioc orders placed: their fills")

    model_config = ConfigDict(json_schema_extra={"examples": [ORDER_EXAMPLE]})


class OrderListOut(OutModel):
    orders: list[OrderOut]
    total: int
    limit: int
    offset: int


class FillListOut(OutModel):
    fills: list[FillOut]
    total: int
    limit: int
    offset: int


class BalanceOut(OutModel):
    total: dict[str, Dec]
    available: dict[str, Dec]
    reserved: dict[str, Dec]

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"total": {"BTC": 0.00999, "USDT": 500}, "available": {"BTC": 0.00999, "USDT": 0},
         "reserved": {"BTC": 0, "USDT": 500}}]})


_ORDER_FIELDS = tuple(f for f in OrderOut.model_fields if f != "fills")
_FILL_FIELDS = tuple(FillOut.model_fields)


def order_json(order: Order, fills: tuple[Fill, ...] | None = None, status_code: int = 200) -> ExactJSON:
    """An order (with its fills when given) as ``OrderOut``, read straight from the domain objects' attributes
    in the model's field order: the same bytes as ``OrderOut.model_validate(order)`` dumped (the order is the
    ledger's own typed object, already checked; tests/test_rest_models.py compares both), without building
    the model on the hot path of every order placed."""
    return ExactJSON(order_content(order, fills), status_code)


def order_content(order: Order, fills: tuple[Fill, ...] | None = None) -> dict[str, Any]:
    """What ``order_json`` writes, as a dict for ``jsonio.dumps``."""
    out: dict[str, Any] = {f: getattr(order, f) for f in _ORDER_FIELDS}
    if fills is not None:
        out["fills"] = [{f: getattr(fill, f) for f in _FILL_FIELDS} for fill in fills]
    return out


def orders_json(page: Page[Order]) -> ExactJSON:
    return ExactJSON(OrderListOut(orders=[OrderOut.model_validate(o) for o in page.items], total=page.total,
                                  limit=page.limit, offset=page.offset), exclude={"orders": {"__all__": {"fills"}}})


def fills_json(page: Page[Fill]) -> ExactJSON:
    return ExactJSON(FillListOut(fills=[FillOut.model_validate(f) for f in page.items], total=page.total,
                                 limit=page.limit, offset=page.offset))


def balance_json(balances: Mapping[str, Balance]) -> ExactJSON:
    return ExactJSON(BalanceOut(total={a: b.total for a, b in balances.items()},
                                available={a: b.available for a, b in balances.items()},
                                reserved={a: b.reserved for a, b in balances.items()}))
