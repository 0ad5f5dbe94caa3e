"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from gateway.services.accounts import LoginLimiter, PasswordHasher, RegistrationLimiter, UserStore
from gateway.services.credentials import Credentials
from gateway.services.principals import Principal
from gateway.services.trading import Trading
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


def _credentials(request: Request) -> Credentials:
    credentials: Credentials = request.app.state.credentials
    return credentials


def _registration_limiter(request: Request) -> RegistrationLimiter:
    limiter: RegistrationLimiter = request.app.state.registration_limiter
    return limiter


CredentialsDep = Annotated[Credentials, Depends(_credentials)]
RegistrationLimiterDep = Annotated[RegistrationLimiter, Depends(_registration_limiter)]


async def _principal(request: Request, token: Annotated[str | None, Depends(oauth2)]) -> Principal:
    credentials: Credentials = request.app.state.credentials
    return await credentials.authenticate(token)


# Whoever called: an access token or an API key (401 ``not_authenticated``/``invalid_token`` otherwise).
PrincipalDep = Annotated[Principal, Depends(_principal)]


async def _current_user(p: PrincipalDep) -> str:
    return p.user_id


# The authenticated user's id (the token's ``sub`` or the API key's user).
CurrentUser = Annotated[str, Depends(_current_user)]


async def _session(p: PrincipalDep) -> Principal:
    if p.kind != "token":
        raise DomainError("session_required", "log in for this: an API key cannot manage the account "
                                              "(API keys are revoked with DELETE /api-keys/{id})")
    return p


# An access token from /login or /register (403 ``session_required`` for an API key).
SessionDep = Annotated[Principal, Depends(_session)]


@dataclass(frozen=True, slots=True)
class Trader:
    """The authenticated user and the trading service, as one dependency (each one costs per request)."""

    user_id: str
    trading: Trading
    principal: Principal


class _TraderAuth(OAuth2PasswordBearer):
    """The bearer scheme itself resolves to the ``Trader``: one dependency with no sub-dependencies (FastAPI
    resolves each level on every request), and ``/docs`` still shows the same security scheme. ``scope``: what an
    API key needs for the route (403 ``insufficient_scope``)."""

    def __init__(self, scope: str) -> None:
        super().__init__(tokenUrl="/login", auto_error=False, scheme_name=oauth2.scheme_name)
        self.scope = scope

    async def __call__(self, request: Request) -> Trader:  # type: ignore[override]  # returns the Trader, not the token
        state = request.app.state
        token = await super().__call__(request)
        credentials: Credentials = state.credentials
        p = await credentials.authenticate(token)
        if not p.can(self.scope):
            raise DomainError("insufficient_scope", f"this API key may not do this: it needs the scope {self.scope!r}")
        return Trader(p.user_id, state.trading, p)


# The authenticated user (401 otherwise) with the trading service: reading.
TraderDep = Annotated[Trader, Depends(_TraderAuth("read"))]
# The same, for what changes orders or funds: an API key needs the scope ``trade`` (403 otherwise).
TradeDep = Annotated[Trader, Depends(_TraderAuth("trade"))]
