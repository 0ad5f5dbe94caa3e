"""Application factory: wiring only; routes live one file per resource under ``gateway/routes``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import errors, ws
from gateway.naive import NaiveMarketData
from gateway.routes import health
from gateway.streams import MarketData
from shared.redis_conn import connect
from shared.settings import Settings, get_settings


def market_data(settings: Settings) -> MarketData | NaiveMarketData:
    if settings.ws.fanout == "naive":
        return NaiveMarketData(settings)
    return MarketData(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = connect(settings.redis.url)
        app.state.market = market_data(settings)
        await app.state.market.start()
        try:
            yield
        finally:
            await app.state.market.stop()
            await app.state.redis.aclose()

    app = FastAPI(title="Simple Router", version="0.1.0", lifespan=lifespan,
                  description="Market data from Binance and OKX, and a paper-trading account.")
    app.state.settings = settings
    errors.install(app)
    app.include_router(health.router)
    app.include_router(ws.router)
    return app
