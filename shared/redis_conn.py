from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError


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


def connect(url: str) -> aioredis.Redis:
    """An asyncio Redis client with the options every process uses."""
    return aioredis.Redis.from_url(url, health_check_interval=15, socket_keepalive=True, socket_connect_timeout=5,
                                   connection_class=Connection)
