"""``GET /fills``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from gateway.rest.body import api_router
from gateway.rest.deps import TraderDep
from gateway.rest.errors import error_responses
from gateway.rest.models import ExactJSON, FillListOut, fills_json

router = api_router(tags=["orders"])


@router.get("/fills", response_model=FillListOut, summary="Own executions, newest first",
            responses=error_responses(401, 422, 503, s422="`limit` or `offset` out of range"))
async def fills(t: TraderDep,
                limit: Annotated[int, Query(ge=1, le=500)] = 100,
                offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> ExactJSON:
    return fills_json(await t.trading.fills(t.user_id, limit=limit, offset=offset))
