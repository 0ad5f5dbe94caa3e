from __future__ import annotations

from fastapi import APIRouter, Request

from gateway import trading
from gateway.bodies import loads_strict, read_body
from gateway.deps import CurrentUser, RedisDep, SettingsDep
from gateway.routes._body import DECIMAL, JsonOut, json_body

router = APIRouter(tags=["account"], default_response_class=JsonOut)

DEPOSIT_DOC = json_body({"asset": {"type": "string"}, "amount": DECIMAL}, ["asset", "amount"],
                        {"asset": "USDT", "amount": 10000})


@router.post("/deposit", summary="Deposit funds; returns the new balance", openapi_extra=DEPOSIT_DOC)
async def deposit(request: Request, user: CurrentUser, redis: RedisDep, settings: SettingsDep) -> JsonOut:
    body = loads_strict(await read_body(request))
    return JsonOut(await trading.deposit(redis, settings, user, body))


@router.get("/balance", summary="Total, available and reserved amount of every asset")
async def balance(user: CurrentUser, redis: RedisDep, settings: SettingsDep) -> JsonOut:
    return JsonOut(await trading.get_balance(redis, settings, user))
