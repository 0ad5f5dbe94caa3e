"""A stream's starting point: the last message an ingestor kept in Redis (``md_last_key``) for one exchange and pair."""

from __future__ import annotations

import logging
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisError

from shared.schema import SchemaError, decode

log = logging.getLogger(__name__)


class _Kept(Protocol):
    @property
    def exchange(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def ts_recv_us(self) -> int: ...


M = TypeVar("M", bound=_Kept)


async def seed_last(redis: Any, key: str, cls: type[M], exchange: str, symbol: str, latest: dict[str, M]) -> bool | None:
    """Put the ``cls`` message kept under ``key`` in ``latest[exchange]`` unless what is there is as new: True when
    it was put, None when the value kept is not a message (to count), False otherwise (none, another kind, older,
    or Redis unreadable: logged, the live stream starts without it)."""
    try:
        raw = await redis.get(key)
    except (RedisError, OSError) as e:
        log.warning("cannot read %s: %r", key, e)
        return False
    if raw is None:
        return False
    try:
        msg = decode(raw)
    except SchemaError:
        return None
    if not isinstance(msg, cls) or msg.symbol != symbol or msg.exchange != exchange:
        return False
    cur = latest.get(exchange)
    if cur is not None and msg.ts_recv_us <= cur.ts_recv_us:
        return False
    latest[exchange] = msg
    return True
