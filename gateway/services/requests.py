"""What a client may ask of the services: the request models both transports parse, and their error codes.

Requests are ``CodedModel``s: every refusal carries a stable ``code`` (``invalid_number``, ``invalid_side``...)
on REST and WebSocket alike. Amounts are exact decimals (``gateway.services.decimals``).

By default a refused field is code ``validation_error``. ``Annotated[T, code_of("invalid_side")]`` is ``T``
whose every refusal carries the code ``invalid_side`` instead, and ``CodedModel`` (a ``StrictModel``) gives a body's shape
errors codes of their own: ``invalid_body`` (not a JSON object), ``unknown_field``, ``missing_field``
(``null`` counts as absent). ``refusal(errors)`` turns pydantic's errors into one ``DomainError`` (the first
error decides the code) plus the per-field list REST shows::

    class DepositIn(CodedModel):
        asset: Annotated[str, code_of("invalid_field")]
        amount: Annotated[PositiveDec, code_of("invalid_number")]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.services.decimals import ExactDecimal, PositiveDec, to_decimal
from shared import ledger
from shared.errors import DomainError
from shared.ledger import TOKEN_ID_PATTERN

# Pydantic error types that are stable API codes of their own (``coded`` registers them).
API_CODES: set[str] = {"invalid_body", "unknown_field", "missing_field"}
VALIDATION_ERROR = "validation_error"


class StrictModel(BaseModel):
    """Base of request bodies: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


def _reason(e: ValidationError) -> str:
    msg = str(e.errors()[0].get("msg", "invalid value"))
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def code_of(code: str) -> WrapValidator:
    """Metadata giving every refusal of the annotated type the stable error code ``code``:
    ``Annotated[str, StringConstraints(max_length=40), code_of("invalid_field")]`` (last, so that it wraps the
    other constraints)."""
    API_CODES.add(code)

    def wrap(v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(v)
        except ValidationError as e:
            raise PydanticCustomError(code, "{reason}", {"reason": _reason(e)}) from None

    return WrapValidator(wrap)


class CodedModel(StrictModel):
    """A request body whose shape errors have codes: ``invalid_body``, ``unknown_field``, ``missing_field``.

    A ``null`` value counts as an absent field."""

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise PydanticCustomError("invalid_body", "body must be a JSON object")
        fields = cls.model_fields
        unknown = [str(k)[:40] for k in data if k not in fields]
        if unknown:
            raise PydanticCustomError("unknown_field", "unknown field(s): {fields}",
                                      {"fields": ", ".join(sorted(unknown)[:5])})
        missing = [n for n, f in fields.items() if f.is_required() and data.get(n) is None]
        if missing:
            raise PydanticCustomError("missing_field", "{fields} required", {"fields": ", ".join(missing)})
        return {k: v for k, v in data.items() if v is not None}


# -- refusals ---------------------------------------------------------------------------------------

_MESSAGES = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
    "json_invalid": "invalid JSON",
}


def _safe_loc(loc: Sequence[Any]) -> list[str | int]:
    return [x if isinstance(x, int) and not isinstance(x, bool) else str(x)[:64] for x in loc]


def _message(err: dict[str, Any]) -> str:
    kind = str(err.get("type", ""))
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg[:300]


def _field(loc: list[str | int]) -> str:
    parts = loc[1:] if loc and loc[0] == "body" else loc
    return ".".join(str(p) for p in parts) or "body"


class Refused(DomainError):
    """A request refused by its model: the code and message of the first error, and every issue
    (``[{"loc": ["body", "amount"], "msg": "...", "type": "..."}]``, JSON-safe: the input is never echoed)."""

    def __init__(self, code: str, message: str, issues: list[dict[str, Any]]) -> None:
        super().__init__(code, message)
        self.issues = issues


def refusal(errors: Sequence[Any]) -> Refused:
    issues: list[dict[str, Any]] = []
    for err in list(errors)[:20]:
        if not isinstance(err, dict):
            continue
        loc = _safe_loc(err.get("loc", ()))
        issues.append({"loc": loc, "msg": _message(err), "type": str(err.get("type", "value_error"))[:64]})
    detail = "; ".join(f"{_field(i['loc'])}: {i['msg']}" for i in issues) or "invalid request"
    code = issues[0]["type"] if issues and issues[0]["type"] in API_CODES else VALIDATION_ERROR
    return Refused(code, detail, issues)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], obj: Any) -> M:
    """Validate ``obj`` (already parsed by ``gateway.jsonio.loads``) as ``model`` or raise ``Refused``."""
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise refusal([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


# -- the trading requests ---------------------------------------------------------------------------

TokenId = Annotated[str, StringConstraints(pattern=f"^{TOKEN_ID_PATTERN}$"),
                    Field(description="your id for the order, unique per user forever", examples=["my-order-1"]),
                    code_of("invalid_field")]
Name = Annotated[str, StringConstraints(max_length=40), code_of("invalid_field")]
Side = Annotated[ledger.Side, code_of("invalid_side")]
OrderType = Annotated[ledger.OrderType, code_of("invalid_type")]
Amount = Annotated[PositiveDec, code_of("invalid_number")]


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


_PLACE_FIELDS = frozenset(PlaceOrderIn.model_fields)
_TOKEN_ID = re.compile(TOKEN_ID_PATTERN)
_SIDES: dict[str, ledger.Side] = {"buy": "buy", "sell": "sell"}
_TYPES: dict[str, ledger.OrderType] = {"limit": "limit", "market": "market", "ioc": "ioc"}
_POSITIVE = next(m for m in get_args(PositiveDec)[1:] if isinstance(m, ExactDecimal))


def plain_place(data: Any) -> PlaceOrderIn | None:
    """The usual order body validated by the same rules without pydantic's per-field machinery (the hot path of
    ``POST /orders``): what it returns, ``PlaceOrderIn.model_validate`` returns too (tests/test_requests_plain.py).
    None for anything else, and then ``model_validate`` decides, with its error codes."""
    if type(data) is not dict or not data.keys() <= _PLACE_FIELDS:
        return None
    token_id, symbol, given_side = data.get("token_id"), data.get("symbol"), data.get("side")
    given_type = data.get("type")
    side = _SIDES.get(given_side) if type(given_side) is str else None
    type_ = "limit" if given_type is None else _TYPES.get(given_type) if type(given_type) is str else None
    if (type(token_id) is not str or not _TOKEN_ID.fullmatch(token_id) or type(symbol) is not str
            or len(symbol) > 40 or side is None or type_ is None or data.get("quantity") is None):
        return None
    price = data.get("price")
    try:
        quantity = _POSITIVE.bounds(to_decimal(data["quantity"]))
        if price is not None:
            price = _POSITIVE.bounds(to_decimal(price))
    except ValueError:
        return None
    return PlaceOrderIn.model_construct(token_id=token_id, symbol=symbol, side=side, price=price,
                                        quantity=quantity, type=type_)


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
