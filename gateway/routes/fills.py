from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway import trading
from gateway.deps import CurrentUser, RedisDep, SettingsDep
from gateway.routes._body import JsonOut

router = APIRouter(tags=["orders"], default_response_class=JsonOut)


@router.get("/fills", summary="Own executions, newest first")
async def fills(user: CurrentUser, redis: RedisDep, settings: SettingsDep,
                limit: Annotated[int, Query(ge=1, le=500)] = 100,
                offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> JsonOut:
    return JsonOut(await trading.list_fills(redis, settings, user, limit=limit, offset=offset))
