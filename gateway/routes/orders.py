from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway import trading
from gateway.bodies import loads_strict, read_body
from gateway.deps import CurrentUser, RedisDep, SettingsDep
from gateway.routes._body import DECIMAL, JsonOut, json_body
from shared.ledger import Status

router = APIRouter(tags=["orders"], default_response_class=JsonOut)

PLACE_DOC = json_body(
    {"token_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "symbol": {"type": "string"},
     "side": {"enum": ["buy", "sell"]}, "price": DECIMAL, "quantity": DECIMAL,
     "type": {"enum": ["limit", "market", "ioc"], "default": "limit"}},
    ["token_id", "symbol", "side", "quantity"],
    {"token_id": "my-order-1", "symbol": "BTCUSDT", "side": "buy", "price": 50000, "quantity": 0.01})
MODIFY_DOC = json_body({"price": DECIMAL, "quantity": DECIMAL}, [], {"price": 49000})


@router.post("/orders", status_code=201, summary="Place an order (limit, market or ioc)", openapi_extra=PLACE_DOC)
async def place(request: Request, user: CurrentUser, redis: RedisDep, settings: SettingsDep) -> JsonOut:
    return JsonOut(await trading.place_order(redis, settings, user, loads_strict(await read_body(request))),
                          status_code=201)


@router.get("/orders", summary="Own orders, newest first")
async def list_orders(user: CurrentUser, redis: RedisDep, settings: SettingsDep,
                      status: Status | None = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100,
                      offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> JsonOut:
    return JsonOut(await trading.list_orders(redis, settings, user, status=status, limit=limit, offset=offset))


@router.get("/orders/{token_id}", summary="One of your orders")
async def get_order(token_id: str, user: CurrentUser, redis: RedisDep, settings: SettingsDep) -> JsonOut:
    return JsonOut(await trading.get_order(redis, settings, user, token_id))


@router.delete("/orders/{token_id}", summary="Cancel an open order; releases its reservation")
async def cancel(token_id: str, user: CurrentUser, redis: RedisDep, settings: SettingsDep) -> JsonOut:
    return JsonOut(await trading.cancel_order(redis, settings, user, token_id))


@router.put("/orders/{token_id}", summary="New price and/or quantity of an open limit order",
            openapi_extra=MODIFY_DOC)
async def modify(token_id: str, request: Request, user: CurrentUser, redis: RedisDep,
                 settings: SettingsDep) -> JsonOut:
    return JsonOut(await trading.modify_order(redis, settings, user, token_id, loads_strict(await read_body(request))))
