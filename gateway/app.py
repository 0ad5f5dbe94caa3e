"""Application factory: wiring only. REST routes live one file per resource under ``gateway/rest/routes``, the
real-time WebSocket under ``gateway/realtime``, the services both call under ``gateway/services``."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from gateway import metrics
from gateway.realtime import connection, order_actions
from gateway.realtime.streams import MarketData
from gateway.rest import dashboard, errors, openapi
from gateway.rest.body import BodyLimitMiddleware, JsonRoute
from gateway.rest.fast import PATH, FastPlace
from gateway.rest.routes import api_keys, auth, balance, fills, health, info, orders
from gateway.services.accounts import LoginLimiter, PasswordHasher, RegistrationLimiter, UserStore
from gateway.services.credentials import Credentials
from gateway.services.order_events import OrderEvents
from gateway.services.trading import Trading
from shared import gctune, ledger_store, names, tokens
from shared.redis_conn import Client, check_mode, connect_any
from shared.settings import Settings, get_settings

log = logging.getLogger("gateway")


class GatewayConfigError(RuntimeError):
    pass


def check_settings(settings: Settings) -> None:
    """Refuse to start on settings the gateway cannot run safely with. An empty secret is allowed: the gateway
    then shares one made up in Redis (``shared_secret``)."""
    if settings.auth.jwt_secret == "":
        return
    try:
        tokens.check_secret(settings.auth.jwt_secret)
    except tokens.TokenError:
        raise GatewayConfigError(
            f"JWT secret shorter than {tokens.MIN_SECRET_BYTES} bytes: set JWT_SECRET (or "
            f"SR_AUTH__JWT_SECRET / [auth] jwt_secret) to a random string, e.g. "
            f"`python -c 'import secrets; print(secrets.token_urlsafe(48))'`, or leave it empty to have the "
            f"gateway keep one in Redis"
        ) from None


async def shared_secret(redis: Client) -> str:
    """The secret kept in Redis, made up by whichever gateway process asks first (``SET NX``: all agree)."""
    await redis.set(names.JWT_SECRET_KEY, secrets.token_urlsafe(48), nx=True)
    raw = await redis.get(names.JWT_SECRET_KEY)
    value = raw.decode() if isinstance(raw, bytes) else raw
    if not isinstance(value, str):
        raise GatewayConfigError(f"{names.JWT_SECRET_KEY} vanished from Redis")
    try:
        tokens.check_secret(value)
    except tokens.TokenError:
        raise GatewayConfigError(f"the secret in Redis ({names.JWT_SECRET_KEY}) is shorter than "
                                 f"{tokens.MIN_SECRET_BYTES} bytes: delete it or set JWT_SECRET") from None
    return value


async def resolve_secret(settings: Settings, redis: Client) -> Settings:
    """``settings`` with the JWT secret every route, the WebSocket and token issuing use."""
    if settings.auth.jwt_secret:
        return settings
    secret = await shared_secret(redis)
    log.warning("no JWT secret configured (JWT_SECRET empty): using the one kept in Redis under %s; set "
                "JWT_SECRET to manage it yourself", names.JWT_SECRET_KEY,
                extra={"fields": {"event": "jwt_secret_from_redis", "key": names.JWT_SECRET_KEY}})
    return settings.model_copy(update={"auth": settings.auth.model_copy(update={"jwt_secret": secret})})


class GatewayApp(FastAPI):
    """FastAPI, with ``POST /orders`` handed to ``gateway.rest.fast`` before FastAPI's middleware stack."""

    fast_place: FastPlace | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.fast_place
        if lane is not None and scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST":
            await lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_settings(settings)
    auth_cfg = settings.auth

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = connect_any(settings.redis.url, settings.redis.cluster)
        await check_mode(app.state.redis)  # REDIS_CLUSTER against what the server is: refused at start
        ledger_store.require_replicas(app.state.redis, settings.redis.replica_acks, settings.redis.replica_ack_timeout_ms)
        # Every reader of the secret goes through app.state.settings (REST deps, WebSocket, token issuing).
        app.state.settings = await resolve_secret(settings, app.state.redis)
        app.state.users = UserStore(app.state.redis)
        app.state.login_limiter = LoginLimiter(app.state.redis, auth_cfg.login_failures_per_user,
                                               auth_cfg.login_failures_per_ip, auth_cfg.login_failure_window_s)
        app.state.registration_limiter = RegistrationLimiter(
            app.state.redis, auth_cfg.registrations_per_ip, auth_cfg.registration_ip_window_s,
            auth_cfg.registrations_global, auth_cfg.registration_global_window_s)
        app.state.credentials = Credentials(app.state.redis, app.state.settings)
        await app.state.credentials.start()
        # One core stays free for the event loop: hashes queue rather than starve market data.
        hashes = auth_cfg.max_concurrent_hashes or max(1, (os.cpu_count() or 2) - 1)
        app.state.hasher = PasswordHasher(auth_cfg.bcrypt_rounds, hashes, auth_cfg.max_waiting_hashes)
        await app.state.hasher.start()
        app.state.market = MarketData(settings)
        await app.state.market.start()
        app.state.order_events = OrderEvents(settings.redis.url, settings.redis.cluster)
        await app.state.order_events.start()
        app.state.orders_stream = order_actions.OrdersStream(app.state.order_events)
        app.state.trading = Trading(app.state.redis, app.state.settings, final=app.state.order_events)
        reporter = asyncio.create_task(metrics.queue_stats_reporter(), name="queue-stats-reporter")
        try:
            with gctune.frozen():
                yield
        finally:
            reporter.cancel()
            metrics.report_queue_stats()
            await app.state.order_events.stop()
            await app.state.credentials.stop()
            await app.state.market.stop()
            await app.state.redis.aclose()
            metrics.worker_exit()

    app = GatewayApp(title="Simple Router", version="0.1.0", lifespan=lifespan,
                  description="Market data from Binance and OKX, and a paper-trading account. Every error is "
                              '`{"detail": "...", "code": "..."}`.')
    app.router.route_class = JsonRoute
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.gateway.max_body_bytes)
    app.add_middleware(metrics.HttpMetricsMiddleware)  # outermost: times everything, 413s included
    # The routers' routes go on the application's own router, ahead of the docs pages: an included router is
    # matched through a layer of its own on every request (FastAPI >= 0.160), which /health paid for.
    app.router.routes[0:0] = [route for router in (health.router, auth.router, api_keys.router, info.router,
                                                   balance.router, orders.router, fills.router, connection.router)
                              for route in router.routes]
    app.router.routes.extend(dashboard.routes)  # the dashboard (docs/dashboard.md)
    openapi.install(app, settings)
    app.fast_place = FastPlace(app, functools.partial(FastAPI.__call__, app), app.router.routes,
                               settings.gateway.max_body_bytes)
    return app
