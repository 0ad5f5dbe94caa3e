from __future__ import annotations

import redis.asyncio as aioredis


def connect(url: str, **kw: object) -> aioredis.Redis:
    """An asyncio Redis client with the options every process uses."""
    opts: dict[str, object] = {"health_check_interval": 15, "socket_keepalive": True, "socket_connect_timeout": 5}
    opts.update(kw)
    return aioredis.Redis.from_url(url, **opts)  # type: ignore[arg-type]
