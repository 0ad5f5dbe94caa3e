"""Real servers for tests: the gateway under uvicorn on a loopback port, stopped when the test ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.cluster
import uvicorn

from shared.embedded_redis import free_port
from shared.redis_conn import Client, connect_any
from shared.settings import Settings, load_settings

# ``SR_TEST_CLUSTER=1``: the cluster pass of ``make test`` runs the REST, WebSocket-trading, hostile-input and
# schemathesis suites again, every process on the session's Redis Cluster (tests/conftest.py's ``redis_url``).
CLUSTER_PASS = os.environ.get("SR_TEST_CLUSTER") == "1"


# Suites register many users from 127.0.0.1: the registration limits are lifted unless a test sets its own. So is
# the hashing queue's bound (16): bursts of 50 registrations on a loaded machine got 503s where a test meant to see
# 201/409 (the full queue has its own tests in test_accounts.py and test_auth_http.py).
TEST_LIMITS = {"SR_AUTH__REGISTRATIONS_PER_IP": "1000000", "SR_AUTH__REGISTRATIONS_GLOBAL": "1000000",
               "SR_AUTH__MAX_WAITING_HASHES": "100000"}


def flush_sync(url: str) -> None:
    """Empty the test's Redis (every master in the cluster pass)."""
    if CLUSTER_PASS:
        rc = redis.cluster.RedisCluster.from_url(url)
        try:
            rc.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
        finally:
            rc.close()
        return
    r = redis.Redis.from_url(url)
    try:
        r.flushdb()
    finally:
        r.close()


def redis_client(url: str) -> Client:
    """An asyncio client for the test's Redis: the cluster client in the cluster pass."""
    return connect_any(url, CLUSTER_PASS)


def make_settings(redis_url: str, **env: str) -> Settings:
    base = {"REDIS_URL": redis_url, "JWT_SECRET": "test-secret-" + "x" * 32, "SR_AUTH__BCRYPT_ROUNDS": "4", **TEST_LIMITS}
    if CLUSTER_PASS:
        base["REDIS_CLUSTER"] = "1"
    base.update(env)
    return load_settings(env=base)


@contextlib.asynccontextmanager
async def run_gateway(redis_url: str, settings: Settings | None = None, app: Any = None,
                      uvicorn_options: dict[str, Any] | None = None, **env: str) -> AsyncIterator[str]:
    """``app``: an already built application (e.g. with extra test routes) instead of ``create_app``'s;
    ``uvicorn_options`` override the gateway's (``gateway.realtime.server.UVICORN_OPTIONS``)."""
    from gateway.app import create_app
    from gateway.realtime.server import UVICORN_OPTIONS

    uvicorn_options = uvicorn_options or {}

    settings = settings or make_settings(redis_url, **env)
    port = free_port()
    config = uvicorn.Config(app or create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", **{**UVICORN_OPTIONS, **uvicorn_options})
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
