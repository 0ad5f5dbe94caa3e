"""``GET /fills``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from gateway import trading
from gateway.deps import TraderDep
from gateway.errors import error_responses
from gateway.schemas import JsonOut, api_router
from gateway.trading_models import FillListOut

router = api_router(tags=["orders"])


@router.get("/fills", response_model=FillListOut, summary="Own executions, newest first",
            responses=error_responses(401, 422, 503, s422="`limit` or `offset` out of range"))
async def fills(t: TraderDep,
                limit: Annotated[int, Query(ge=1, le=500)] = 100,
                offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> JsonOut:
    return JsonOut(await trading.list_fills(t.redis, t.settings, t.user_id, limit=limit, offset=offset))
