"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from gateway.accounts import LoginLimiter, PasswordHasher, UserStore
from gateway.errors import ApiError
from gateway.order_events import OrderEvents
from shared import tokens
from shared.settings import Settings

oauth2 = OAuth2PasswordBearer(tokenUrl="/login", auto_error=False)


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


def _users(request: Request) -> UserStore:
    return request.app.state.users  # type: ignore[no-any-return]


def _hasher(request: Request) -> PasswordHasher:
    return request.app.state.hasher  # type: ignore[no-any-return]


def _login_limiter(request: Request) -> LoginLimiter:
    return request.app.state.login_limiter  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[aioredis.Redis, Depends(_redis)]
UsersDep = Annotated[UserStore, Depends(_users)]
HasherDep = Annotated[PasswordHasher, Depends(_hasher)]
LoginLimiterDep = Annotated[LoginLimiter, Depends(_login_limiter)]

_BEARER = {"WWW-Authenticate": "Bearer"}


# A client sends the same token on every request: verifying it once per ``ttl_s`` is enough.
verified_tokens = tokens.VerifiedTokens()


def _user_of(settings: Settings, token: str | None) -> str:
    if not token:
        raise ApiError(401, "not_authenticated", "not authenticated: send Authorization: Bearer <token>", _BEARER)
    try:
        return verified_tokens.verify(token, settings.auth.jwt_secret)
    except tokens.TokenError as e:
        raise ApiError(401, "invalid_token", str(e), _BEARER) from None


async def _current_user(request: Request, token: Annotated[str | None, Depends(oauth2)]) -> str:
    return _user_of(request.app.state.settings, token)


# The authenticated user's id (the token's ``sub``); 401 ``not_authenticated``/``invalid_token`` otherwise.
CurrentUser = Annotated[str, Depends(_current_user)]


def _order_events(request: Request) -> OrderEvents:
    return request.app.state.order_events  # type: ignore[no-any-return]


OrderEventsDep = Annotated[OrderEvents, Depends(_order_events)]


@dataclass(frozen=True, slots=True)
class Trader:
    """Everything a trading route needs, as one dependency (each extra dependency costs per request)."""

    user_id: str
    redis: aioredis.Redis
    settings: Settings
    events: OrderEvents


class _TraderAuth(OAuth2PasswordBearer):
    """The bearer scheme itself resolves to the ``Trader``: one dependency with no sub-dependencies (FastAPI
    resolves each level on every request), and ``/docs`` still shows the same security scheme."""

    async def __call__(self, request: Request) -> Trader:  # type: ignore[override]
        state = request.app.state
        token = await super().__call__(request)
        return Trader(_user_of(state.settings, token), state.redis, state.settings, state.order_events)


_trader = _TraderAuth(tokenUrl="/login", auto_error=False, scheme_name=oauth2.scheme_name)

# The authenticated user (401 otherwise) with the app's Redis, settings and order events.
TraderDep = Annotated[Trader, Depends(_trader)]
