"""Application factory: wiring only; routes live one file per resource under ``gateway/routes``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import errors, trading
from gateway.routes import balance, fills, health, orders
from shared.redis_conn import connect
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = connect(settings.redis.url)
        try:
            yield
        finally:
            await app.state.redis.aclose()

    app = FastAPI(title="Simple Router", version="0.1.0", lifespan=lifespan,
                  description="Market data from Binance and OKX, and a paper-trading account.")
    app.state.settings = settings
    errors.install(app)
    trading.install(app)
    app.include_router(health.router)
    app.include_router(balance.router)
    app.include_router(orders.router)
    app.include_router(fills.router)
    return app
