"""The pub/sub hub's promise to its callers: once ``acquire`` returns, a message published on the channel from any
other connection is delivered (the gateway acks "subscribed" right after it, and the order event that follows must
not be lost). Real redis-server (a real cluster in the cluster pass)."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.pubsub import RedisHub
from tests.e2etools import wait_until
from tests.servers import CLUSTER_PASS, redis_client


async def _publish(r: object, channel: str, data: str) -> int:
    if CLUSTER_PASS:
        return int(await r.spublish(channel, data))  # type: ignore[attr-defined]
    return int(await r.publish(channel, data))  # type: ignore[attr-defined]


async def test_a_message_published_right_after_acquire_is_delivered(redis_url: str) -> None:
    got: list[tuple[str, bytes]] = []
    hub = RedisHub(redis_url, CLUSTER_PASS, lambda ch, data: got.append((ch, data)))
    r = redis_client(redis_url)
    await hub.start()
    try:
        channels = [f"hubtest:{{u{i}}}:events" for i in range(40)]
        for ch in channels:
            assert await hub.acquire(ch)
            assert await _publish(r, ch, ch) == 1, f"{ch}: no subscriber once acquire returned"
        # A second user of a channel whose subscribe is already confirmed returns at once and shares it.
        assert not await hub.acquire(channels[0])
        await wait_until(lambda: len(got) >= len(channels), 5, "every message")
        assert [d.decode() for _, d in got] == channels
    finally:
        await hub.stop()
        await r.aclose()


async def test_concurrent_first_users_all_wait_for_the_confirmation(redis_url: str) -> None:
    got: list[bytes] = []
    hub = RedisHub(redis_url, CLUSTER_PASS, lambda _ch, data: got.append(data))
    r = redis_client(redis_url)
    await hub.start()
    try:
        ch = "hubtest:{shared}:events"
        firsts = await asyncio.gather(*(hub.acquire(ch) for _ in range(5)))
        assert sorted(firsts) == [False, False, False, False, True]
        assert await _publish(r, ch, "x") == 1
    finally:
        await hub.stop()
        await r.aclose()


@pytest.mark.skipif(CLUSTER_PASS, reason="one dead server is enough")
async def test_acquire_does_not_wait_when_the_subscribe_could_not_be_sent() -> None:
    hub = RedisHub("redis://127.0.0.1:1", False, lambda _ch, _data: None)
    await hub.start()
    try:
        t0 = time.monotonic()
        for i in range(5):
            assert await hub.acquire(f"dead:{i}")
        assert await hub.acquire("dead:0") is False
        assert time.monotonic() - t0 < 5  # no 2 s confirmation wait per channel (a gateway starting with Redis down)
    finally:
        await hub.stop()
