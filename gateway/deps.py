"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer

from shared import tokens
from shared.settings import Settings

oauth2 = OAuth2PasswordBearer(tokenUrl="/login", auto_error=False)


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[aioredis.Redis, Depends(_redis)]


async def _current_user(settings: SettingsDep, token: Annotated[str | None, Depends(oauth2)]) -> str:
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not authenticated", headers={"WWW-Authenticate": "Bearer"})
    try:
        return tokens.verify(token, settings.auth.jwt_secret)
    except tokens.TokenError as e:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(e), headers={"WWW-Authenticate": "Bearer"}) from None


CurrentUser = Annotated[str, Depends(_current_user)]
