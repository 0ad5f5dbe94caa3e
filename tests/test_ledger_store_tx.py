"""``ledger_store.transact``: WATCH + reads in one round trip, MULTI/EXEC in a second; a conflicting write in
between makes EXEC fail and the step run again on fresh state; an aborted step leaves a clean connection."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from shared import ledger_store
from shared.errors import DomainError

pytestmark = pytest.mark.asyncio


async def test_conflict_recomputes_from_fresh_state(redis_url: str, aredis: aioredis.Redis) -> None:
    await aredis.set("{u:t}:n", "1")
    other = redis.Redis.from_url(redis_url)  # another client (process) writing between the read and EXEC
    seen: list[bytes] = []

    def step(replies: list[Any]) -> tuple[int, list[tuple[Any, ...]]]:
        seen.append(replies[0])
        if len(seen) == 1:
            other.set("{u:t}:n", "5")
        n = int(replies[0]) + 1
        return n, [("SET", "{u:t}:n", str(n)), ("PUBLISH", "chan", b"x")]

    try:
        assert await ledger_store.transact(aredis, ["{u:t}:n"], [("GET", "{u:t}:n")], step) == 6
    finally:
        other.close()
    assert seen == [b"1", b"5"]
    assert await aredis.get("{u:t}:n") == b"6"


async def test_abort_and_no_op_leave_nothing_watched(aredis: aioredis.Redis) -> None:
    await aredis.set("{u:t}:n", "1")

    def refuse(replies: list[Any]) -> tuple[None, None]:
        raise DomainError("nope", "refused")

    def nothing(replies: list[Any]) -> tuple[str, None]:
        return "same", None

    for _ in range(3):
        with pytest.raises(DomainError):
            await ledger_store.transact(aredis, ["{u:t}:n"], [("GET", "{u:t}:n")], refuse)
        assert await ledger_store.transact(aredis, ["{u:t}:n"], [("GET", "{u:t}:n")], nothing) == "same"
    # the pooled connection carries no stale WATCH: a plain transaction on it still applies
    await aredis.set("{u:t}:n", "2")
    async with aredis.pipeline(transaction=True) as pipe:
        pipe.incr("{u:t}:n")
        assert await pipe.execute() == [3]


async def test_a_failing_queued_command_raises(aredis: aioredis.Redis) -> None:
    await aredis.set("{u:t}:s", "text")

    def step(replies: list[Any]) -> tuple[int, list[tuple[Any, ...]]]:
        return 1, [("HSET", "{u:t}:s", "f", "v")]  # WRONGTYPE at EXEC

    with pytest.raises(redis.ResponseError):
        await ledger_store.transact(aredis, ["{u:t}:s"], [("GET", "{u:t}:s")], step)
    assert await aredis.get("{u:t}:s") == b"text"
