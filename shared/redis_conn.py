from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

# Either client: code that needs one or the other says so with isinstance (ledger transactions, pub/sub).
Client = aioredis.Redis | RedisCluster

_OPTIONS = dict(health_check_interval=15, socket_keepalive=True, socket_connect_timeout=5)


class Connection(aioredis.Connection):
    """redis-py's connection, with one fix: under uvloop, writing to a socket the server has just closed (a
    Redis restart) raises ``RuntimeError("unable to perform operation on <TCPTransport closed=True ...>")``,
    which redis-py lets through as is. It is a lost connection like any other: redis-py's ``ConnectionError``,
    so its retry, the pub/sub reconnects and the gateway's 503 all apply (tests/test_faults.py)."""

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as e:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"connection lost while writing: {e}") from e


def seeds(url: str) -> list[str]:
    """``redis://a:7000,redis://b:7001`` (or one URL) -> the URLs."""
    return [u.strip() for u in url.split(",") if u.strip()]


def connect(url: str) -> aioredis.Redis:
    """An asyncio Redis client (one server) with the options every process uses."""
    return aioredis.Redis.from_url(seeds(url)[0], connection_class=Connection, **_OPTIONS)  # type: ignore[arg-type]


def connect_cluster(url: str) -> RedisCluster:
    """A Redis Cluster client from one or more seed nodes: any live one is enough to learn the slot map."""
    urls = seeds(url)
    first = urlsplit(urls[0])
    nodes = [ClusterNode(p.hostname or "127.0.0.1", p.port or 6379) for p in map(urlsplit, urls)]
    return RedisCluster(startup_nodes=nodes, username=first.username, password=first.password,
                        ssl=first.scheme == "rediss", require_full_coverage=True, **_OPTIONS)  # type: ignore[arg-type]


def connect_any(url: str, cluster: bool) -> Client:
    return connect_cluster(url) if cluster else connect(url)


_refreshing: dict[int, asyncio.Task[None]] = {}


async def refresh_topology(r: RedisCluster) -> None:
    """Learn the slot map again (after a MOVED reply, a failover, a lost node). Concurrent callers share one
    refresh; a failure is left to the caller's next attempt."""
    task = _refreshing.get(id(r))
    if task is None or task.done():
        task = _refreshing[id(r)] = asyncio.ensure_future(r.nodes_manager.initialize())
    with contextlib.suppress(RedisError, OSError, RedisClusterException):
        await asyncio.shield(task)


async def ready(r: RedisCluster) -> None:
    """The slot map, before the first command (redis-py learns it lazily)."""
    if not r.nodes_manager.slots_cache:
        await r.initialize()


class WrongMode(RuntimeError):
    """``redis.cluster`` does not match the server: a refusal at start, not MOVED errors later."""


async def check_mode(r: Client) -> None:
    """Raise ``WrongMode`` when the server is reachable and its cluster mode is not the client's; a server that
    cannot be reached yet is left to the caller's reconnects."""
    try:
        if isinstance(r, RedisCluster):
            await ready(r)
            return
        enabled = str((await r.info("cluster")).get("cluster_enabled", 0)) == "1"
    except RedisClusterException as e:
        if "not enabled" in str(e).lower():
            raise WrongMode("REDIS_CLUSTER=1 but the Redis server at REDIS_URL is not a cluster node: "
                            "unset REDIS_CLUSTER (redis.cluster) or point REDIS_URL at a cluster") from e
        return
    except (RedisError, OSError):
        return
    if enabled:
        raise WrongMode("the Redis server at REDIS_URL is a cluster node: set REDIS_CLUSTER=1 (redis.cluster = true)")
