"""``POST /deposit`` and ``GET /balance``."""

from __future__ import annotations

from gateway.rest.body import api_router
from gateway.rest.deps import TradeDep, TraderDep
from gateway.rest.errors import error_responses
from gateway.rest.models import BalanceOut, ExactJSON, balance_json
from gateway.services.requests import DepositIn

router = api_router(tags=["account"])


@router.post(
    "/deposit", response_model=BalanceOut, summary="Deposit funds; returns the new balance",
    description="The asset must belong to a configured pair; the amount is positive, at most 1e12, with at most "
                "the asset's precision in decimal places (`too_precise`).",
    responses=error_responses(400, 401, 403, 413, 415, 422, 503,
                              s400="body is not valid JSON (`invalid_json`: syntax, NaN, Infinity, nesting)",
                              s422="`unknown_asset`, `invalid_number`, `too_precise`, `amount_too_large`, "
                                   "`unknown_field`, `missing_field`, `invalid_field`, `invalid_body`"),
)
async def deposit(body: DepositIn, t: TradeDep) -> ExactJSON:
    return balance_json(await t.trading.deposit(t.user_id, body))


@router.get("/balance", response_model=BalanceOut, summary="Total, available and reserved amount of every asset",
            responses=error_responses(401, 503))
async def balance(t: TraderDep) -> ExactJSON:
    return balance_json(await t.trading.balance(t.user_id))
