"""Shared fixtures: a real redis-server for the whole session (never a mock)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from shared.embedded_redis import EmbeddedRedis

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "exchange-captures"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    url = os.environ.get("TEST_REDIS_URL")
    if url:  # an external server chosen by the user: use it as is
        srv = EmbeddedRedis(tmp_path_factory.mktemp("unused"))
        srv.port = int(url.rsplit(":", 1)[1].split("/")[0])
        yield srv
        return
    srv = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """A clean database for each test."""
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    r.close()
    yield redis_server.url


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_url)
    try:
        yield r
    finally:
        await r.aclose()


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    if not CAPTURES.is_dir():
        pytest.skip(f"exchange captures not found at {CAPTURES}")
    return CAPTURES
