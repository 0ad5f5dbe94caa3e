"""Shared fixtures: a real redis-server for the whole session (never a mock)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from shared.embedded_cluster import EmbeddedCluster, NoClusterServer, cluster_server_binary
from shared.embedded_redis import EmbeddedRedis
from tests.servers import CLUSTER_PASS, redis_client

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


@pytest.fixture(scope="session")
def redis_base_url(request: pytest.FixtureRequest) -> str:
    """The session's Redis (the cluster's seed in the cluster pass), not flushed: for module-scoped servers."""
    if CLUSTER_PASS:
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")
        return cluster.seed_url
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A clean database for each test (in the cluster pass, ``SR_TEST_CLUSTER=1``: the session cluster, flushed)."""
    if CLUSTER_PASS:
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        yield cluster.seed_url
        return
    redis_server: EmbeddedRedis = request.getfixturevalue("redis_server")
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    r.close()
    yield redis_server.url


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = redis_client(redis_url)
    if CLUSTER_PASS:
        await r.initialize()  # type: ignore[misc]
    try:
        yield r
    finally:
        await r.aclose()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A Redis Cluster on loopback for the session: 3 masters, ``SR_TEST_CLUSTER_REPLICAS`` (1) replicas each.

    Started only when a test asks for it (about 2-4 s). Tests that kill or fail over nodes start their own
    ``EmbeddedCluster`` so that this one keeps its formed topology.
    """
    try:
        binary = cluster_server_binary()
    except NoClusterServer as e:
        pytest.skip(f"no Redis >= 7 / Valkey server for a cluster: {e}")
    replicas = int(os.environ.get("SR_TEST_CLUSTER_REPLICAS", "1"))
    cluster = EmbeddedCluster(3, replicas, base_dir=tmp_path_factory.mktemp("cluster"), binary=binary)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: EmbeddedCluster) -> str:
    """The session cluster's seed URL, every master FLUSHALLed first (replicas follow their masters)."""
    redis_cluster.flushall()
    return redis_cluster.seed_url


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    if not CAPTURES.is_dir():
        pytest.skip(f"exchange captures not found at {CAPTURES}")
    return CAPTURES
