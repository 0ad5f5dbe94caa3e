"""Real servers for tests: the gateway under uvicorn on a loopback port, stopped when the test ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from shared.embedded_redis import free_port
from shared.settings import Settings, load_settings


def make_settings(redis_url: str, **env: str) -> Settings:
    base = {"REDIS_URL": redis_url, "JWT_SECRET": "test-secret-" + "x" * 32, "SR_AUTH__BCRYPT_ROUNDS": "4"}
    base.update(env)
    return load_settings(env=base)


@contextlib.asynccontextmanager
async def run_gateway(redis_url: str, settings: Settings | None = None, app: Any = None,
                      uvicorn_options: dict[str, Any] | None = None, **env: str) -> AsyncIterator[str]:
    """``app``: an already built application (e.g. with extra test routes) instead of ``create_app``'s;
    ``uvicorn_options`` override the gateway's (``gateway.realtime.server.UVICORN_WS_OPTIONS``)."""
    from gateway.app import create_app
    from gateway.realtime.server import UVICORN_WS_OPTIONS

    uvicorn_options = uvicorn_options or {}

    settings = settings or make_settings(redis_url, **env)
    port = free_port()
    config = uvicorn.Config(app or create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", **{**UVICORN_WS_OPTIONS, **uvicorn_options})
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError("gateway did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
