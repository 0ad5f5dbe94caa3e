"""Application factory: wiring only; routes live one file per resource under ``gateway/routes``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import errors, trading, ws, ws_orders  # noqa: F401 - ws_orders registers the order actions
from gateway.accounts import LoginLimiter, PasswordHasher, UserStore
from gateway.middleware import BodyLimitMiddleware
from gateway.naive import NaiveMarketData
from gateway.order_events import OrderEvents
from gateway.routes import auth, balance, fills, health, info, orders
from gateway.schemas import JsonRoute
from gateway.streams import MarketData
from shared import tokens
from shared.redis_conn import connect
from shared.settings import Settings, get_settings


class GatewayConfigError(RuntimeError):
    pass


def check_settings(settings: Settings) -> None:
    """Refuse to start on settings the gateway cannot run safely with."""
    try:
        tokens.check_secret(settings.auth.jwt_secret)
    except tokens.TokenError:
        raise GatewayConfigError(
            f"JWT secret missing or shorter than {tokens.MIN_SECRET_BYTES} bytes: set JWT_SECRET (or "
            f"SR_AUTH__JWT_SECRET / [auth] jwt_secret) to a random string, e.g. "
            f"`python -c 'import secrets; print(secrets.token_urlsafe(48))'`; `make run` generates one"
        ) from None


def market_data(settings: Settings) -> MarketData | NaiveMarketData:
    if settings.ws.fanout == "naive":
        return NaiveMarketData(settings)
    return MarketData(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_settings(settings)
    auth_cfg = settings.auth

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = connect(settings.redis.url)
        app.state.users = UserStore(app.state.redis)
        app.state.login_limiter = LoginLimiter(app.state.redis, auth_cfg.login_failures_per_user,
                                               auth_cfg.login_failures_per_ip, auth_cfg.login_failure_window_s)
        # One core stays free for the event loop: hashes queue rather than starve market data.
        hashes = auth_cfg.max_concurrent_hashes or max(1, (os.cpu_count() or 2) - 1)
        app.state.hasher = PasswordHasher(auth_cfg.bcrypt_rounds, hashes, auth_cfg.max_waiting_hashes)
        await app.state.hasher.start()
        app.state.market = market_data(settings)
        await app.state.market.start()
        app.state.order_events = OrderEvents(settings)
        await app.state.order_events.start()
        try:
            yield
        finally:
            await app.state.order_events.stop()
            await app.state.market.stop()
            await app.state.redis.aclose()

    app = FastAPI(title="Simple Router", version="0.1.0", lifespan=lifespan,
                  description="Market data from Binance and OKX, and a paper-trading account. Every error is "
                              '`{"detail": "...", "code": "..."}`.',
                  responses={500: {"model": errors.ErrorOut, "description": "Internal error"}})
    app.router.route_class = JsonRoute
    app.state.settings = settings
    errors.install(app)
    trading.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.gateway.max_body_bytes)
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(info.router)
    app.include_router(balance.router)
    app.include_router(orders.router)
    app.include_router(fills.router)
    app.include_router(ws.router)
    return app
