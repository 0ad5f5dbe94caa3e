"""``/orders``: place, read, list, cancel, modify."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from gateway.rest.body import api_router
from gateway.rest.deps import TradeDep, TraderDep
from gateway.rest.errors import error_responses
from gateway.rest.models import ExactJSON, OrderListOut, OrderOut, order_json, orders_json
from gateway.services.requests import ModifyOrderIn, PlaceOrderIn
from shared.ledger import Status

router = api_router(tags=["orders"])

TokenPath = Annotated[str, Path(description="the order's token_id")]
S400 = "`invalid_json` (syntax, NaN, Infinity, nesting), or `insufficient_balance` (available = total - reserved)"
S422 = ("`unknown_symbol`, `invalid_side`, `invalid_type`, `invalid_price` (tick size), `invalid_quantity` (lot "
        "step), `below_min_notional`, `invalid_number`, `invalid_field`, `missing_field`, `unknown_field`, "
        "`invalid_body`")


@router.post(
    "/orders", status_code=201, response_model=OrderOut, summary="Place an order (limit, market or ioc)",
    description="A limit order is answered `open` (the matcher fills it when the market reaches it). A market or "
                "ioc order is answered in its **final state** (`filled`, `expired` or `rejected`, with `fills`): "
                "the gateway waits up to `gateway.order_final_wait_s` (2 s) for the matcher, then answers with "
                "the current state.",
    responses=error_responses(400, 401, 403, 409, 413, 415, 422, 503, s400=S400, s422=S422,
                              s409="`duplicate_token_id`: the token_id was already used"),
)
async def place(body: PlaceOrderIn, t: TradeDep) -> ExactJSON:
    placed = await t.trading.place(t.user_id, body)
    return order_json(placed.order, placed.fills, status_code=201)


@router.get("/orders", response_model=OrderListOut, summary="Own orders, newest first",
            responses=error_responses(401, 422, 503, s422="`status`, `limit` or `offset` out of range"))
async def list_orders(t: TraderDep,
                      status: Status | None = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100,
                      offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> ExactJSON:
    return orders_json(await t.trading.orders(t.user_id, status=status, limit=limit, offset=offset))


@router.get("/orders/{token_id}", response_model=OrderOut, summary="One of your orders",
            responses=error_responses(401, 404, 422, 503, s404="`order_not_found` (or another user's order)"))
async def get_order(token_id: TokenPath, t: TraderDep) -> ExactJSON:
    return order_json(await t.trading.order(t.user_id, token_id))


@router.delete("/orders/{token_id}", response_model=OrderOut,
               summary="Cancel an open order; releases its reservation",
               responses=error_responses(401, 403, 404, 409, 422, 503, s404="`order_not_found`",
                                         s409="`order_not_open`: already filled, cancelled, expired or rejected"))
async def cancel(token_id: TokenPath, t: TradeDep) -> ExactJSON:
    return order_json(await t.trading.cancel(t.user_id, token_id))


@router.put("/orders/{token_id}", response_model=OrderOut,
            summary="New price and/or quantity of an open limit order",
            description="The reservation is swapped atomically; a marketable new price fills at once.",
            responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 503, s400=S400,
                                      s404="`order_not_found`", s422=S422,
                                      s409="`order_not_open` or `not_modifiable` (market/ioc)"))
async def modify(token_id: TokenPath, body: ModifyOrderIn, t: TradeDep) -> ExactJSON:
    return order_json(await t.trading.modify(t.user_id, token_id, body))
