"""Request and response models of the trading API, shared by the REST routes and the WebSocket actions.

Requests are ``CodedModel``s: every refusal carries a stable ``code`` (``invalid_number``, ``invalid_side``...)
on REST and WebSocket alike. Amounts are exact decimals (a JSON number keeps its digits, or a numeric string).
Responses document what ``gateway.trading`` returns: decimals are exact decimal *strings*.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, ValidationError

from gateway.errors import validation_payload
from gateway.schemas import CodedModel, Dec, OutModel, PositiveDec, coded

TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

TokenId = coded("invalid_field", Annotated[str, StringConstraints(pattern=TOKEN_PATTERN),
                                           Field(description="your id for the order, unique per user forever",
                                                 examples=["my-order-1"])])
Name = coded("invalid_field", Annotated[str, StringConstraints(max_length=40)])
Side = coded("invalid_side", Literal["buy", "sell"])
OrderType = coded("invalid_type", Literal["limit", "market", "ioc"])
Amount = coded("invalid_number", PositiveDec)


class DepositIn(CodedModel):
    asset: Name = Field(description="one of the configured assets (GET /info)", examples=["USDT"])
    amount: Amount

    model_config = ConfigDict(json_schema_extra={"examples": [{"asset": "USDT", "amount": 10000}]})


class PlaceOrderIn(CodedModel):
    token_id: TokenId
    symbol: Name = Field(description="a configured pair (GET /info)", examples=["BTCUSDT"])
    side: Side
    price: Amount | None = Field(default=None, description="limit price; required for limit and ioc, "
                                                           "absent for market")
    quantity: Amount
    type: OrderType = "limit"

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"token_id": "my-order-1", "symbol": "BTCUSDT", "side": "buy", "price": 50000, "quantity": 0.01,
         "type": "limit"}]})


def _modify_schema(schema: dict[str, Any]) -> None:
    # null counts as absent (CodedModel) and at least one field must be present: say so in the document.
    for prop in schema["properties"].values():
        prop.update(next(b for b in prop.pop("anyOf") if b.get("type") != "null"))
    schema["minProperties"] = 1
    schema["examples"] = [{"price": 49000, "quantity": 0.02}]


class ModifyOrderIn(CodedModel):
    price: Amount | None = None
    quantity: Amount | None = None

    model_config = ConfigDict(json_schema_extra=_modify_schema)


class FillOut(OutModel):
    fill_id: str
    token_id: str
    symbol: str
    side: Literal["buy", "sell"]
    price: Dec
    quantity: Dec
    fee: Dec
    fee_asset: str
    exchange: str = Field(description="the exchange whose price was taken")
    liquidity: Literal["maker", "taker"]
    ts_us: int

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"fill_id": "b1:1:0", "token_id": "b1", "symbol": "BTCUSDT", "side": "buy", "price": "50000",
         "quantity": "0.01", "fee": "0.00001", "fee_asset": "BTC", "exchange": "okx", "liquidity": "maker",
         "ts_us": 1795702242224772}]})


ORDER_EXAMPLE: dict[str, Any] = {
    "token_id": "my-order-1", "symbol": "BTCUSDT", "side": "buy", "type": "limit", "price": "50000",
    "quantity": "0.01", "status": "open", "filled_quantity": "0", "filled_notional": "0", "average_price": None,
    "fee": "0", "fee_asset": "BTC", "reserve_asset": "USDT", "reserved": "500", "exchanges": [],
    "created_us": 1795702242215964, "updated_us": 1795702242215964, "version": 1, "reason": ""}


class OrderOut(OutModel):
    token_id: str
    symbol: str
    side: Literal["buy", "sell"]
    type: Literal["limit", "market", "ioc"]
    price: Dec | None = Field(description="null for a market order")
    quantity: Dec
    status: Literal["open", "filled", "cancelled", "expired", "rejected"]
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
        {"total": {"BTC": "0.00999", "USDT": "500"}, "available": {"BTC": "0.00999", "USDT": "0"},
         "reserved": {"BTC": "0", "USDT": "500"}}]})


class BadRequest(Exception):
    """A refused body, outside FastAPI (the WebSocket actions): ``code`` and readable ``detail``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse(model: type[CodedModel], obj: Any) -> Any:
    """Validate ``obj`` (already parsed by ``gateway.strict_json``) as ``model`` or raise ``BadRequest``."""
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        out = validation_payload([{**err, "loc": ("body", *err["loc"])} for err in e.errors()])
        raise BadRequest(out["code"], out["detail"]) from None
