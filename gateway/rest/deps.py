"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from gateway.services.accounts import LoginLimiter, PasswordHasher, UserStore
from gateway.services.trading import Trading
from shared import tokens
from shared.errors import DomainError
from shared.settings import Settings

oauth2 = OAuth2PasswordBearer(tokenUrl="/login", auto_error=False)


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _users(request: Request) -> UserStore:
    users: UserStore = request.app.state.users
    return users


def _hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.hasher
    return hasher


def _login_limiter(request: Request) -> LoginLimiter:
    limiter: LoginLimiter = request.app.state.login_limiter
    return limiter


SettingsDep = Annotated[Settings, Depends(_settings)]
UsersDep = Annotated[UserStore, Depends(_users)]
HasherDep = Annotated[PasswordHasher, Depends(_hasher)]
LoginLimiterDep = Annotated[LoginLimiter, Depends(_login_limiter)]


# A client sends the same token on every request: verifying it once per ``ttl_s`` is enough.
verified_tokens = tokens.VerifiedTokens()


def _user_of(settings: Settings, token: str | None) -> str:
    if not token:
        raise DomainError("not_authenticated", "not authenticated: send Authorization: Bearer <token>")
    try:
        return verified_tokens.verify(token, settings.auth.jwt_secret)
    except tokens.TokenError as e:
        raise DomainError("invalid_token", str(e)) from None


async def _current_user(request: Request, token: Annotated[str | None, Depends(oauth2)]) -> str:
    return _user_of(request.app.state.settings, token)


# The authenticated user's id (the token's ``sub``); 401 ``not_authenticated``/``invalid_token`` otherwise.
CurrentUser = Annotated[str, Depends(_current_user)]


@dataclass(frozen=True, slots=True)
class Trader:
    """The authenticated user and the trading service, as one dependency (each one costs per request)."""

    user_id: str
    trading: Trading


class _TraderAuth(OAuth2PasswordBearer):
    """The bearer scheme itself resolves to the ``Trader``: one dependency with no sub-dependencies (FastAPI
    resolves each level on every request), and ``/docs`` still shows the same security scheme."""

    async def __call__(self, request: Request) -> Trader:  # type: ignore[override]  # returns the Trader, not the token
        state = request.app.state
        token = await super().__call__(request)
        return Trader(_user_of(state.settings, token), state.trading)


_trader = _TraderAuth(tokenUrl="/login", auto_error=False, scheme_name=oauth2.scheme_name)

# The authenticated user (401 otherwise) with the trading service.
TraderDep = Annotated[Trader, Depends(_trader)]
