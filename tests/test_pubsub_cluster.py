"""The pub/sub hub (shared/pubsub.py) on the embedded Redis Cluster: sharded channels spread over every master,
reference counting, a MOVED reply, and resubscription after a master failover (a manual one: the server
unsubscribes; a crash: the connection is lost). Real servers, nothing mocked."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from shared.embedded_cluster import EmbeddedCluster, EmbeddedNode
from shared.names import Keyspace, user_events_channel
from shared.pubsub import RedisHub, node_url
from shared.redis_conn import connect_cluster
from shared.settings import EXCHANGES

KS = Keyspace(cluster=True, partitions=16)
SYMBOLS = [f"S{i}USDT" for i in range(12)]


def some_channels() -> list[str]:
    return ([KS.md_channel(kind, ex, s) for s in SYMBOLS for ex in EXCHANGES for kind in ("bbo", "trade")]
            + [KS.status_channel(ex) for ex in EXCHANGES] + [user_events_channel(str(u)) for u in range(4)])


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes, float]] = []
        self.resubscribed = 0
        self.new = asyncio.Event()

    def dispatch(self, channel: str, data: bytes) -> None:
        self.got.append((channel, data, time.monotonic()))
        self.new.set()

    def on_resubscribed(self) -> None:
        self.resubscribed += 1

    def of(self, channel: str) -> list[bytes]:
        return [d for c, d, _ in self.got if c == channel]

    async def until(self, pred: Callable[[], bool], within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.new.clear()
            try:
                await asyncio.wait_for(self.new.wait(), 0.05)
            except TimeoutError:
                pass


async def subscribers(rc: RedisCluster, channel: str) -> int:
    """``PUBSUB SHARDNUMSUB`` on the master that owns the channel's slot."""
    node = rc.get_node_from_key(channel)
    assert node is not None
    direct = aioredis.Redis(host=node.host, port=int(node.port))
    try:
        [(_, n)] = await direct.pubsub_shardnumsub(channel)
        return int(n)
    finally:
        await direct.aclose()


async def wait_subscribers(rc: RedisCluster, channels: Sequence[str], n: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    for ch in channels:
        while True:
            try:
                if await subscribers(rc, ch) == n:
                    break
            except (RedisError, RedisClusterException, OSError):
                await rc.nodes_manager.initialize()
            assert time.monotonic() < deadline, f"{ch}: not {n} subscriber(s) on its master"
            await asyncio.sleep(0.05)


async def spublish(rc: RedisCluster, channel: str, data: str) -> int:
    """SPUBLISH through the cluster client, learning the slot map again while a failover settles."""
    for _ in range(200):
        try:
            return int(await rc.spublish(channel, data))
        except (RedisError, RedisClusterException, OSError):
            await asyncio.sleep(0.05)
            try:
                await rc.nodes_manager.initialize()
            except (RedisError, RedisClusterException, OSError):
                pass
    raise AssertionError(f"could not SPUBLISH on {channel}")


async def open_hub(url: str, rec: Recorder) -> RedisHub:
    hub = RedisHub(url, True, rec.dispatch, on_resubscribed=rec.on_resubscribed)
    await hub.start()
    return hub


@pytest.fixture
async def rc(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = connect_cluster(cluster_url)
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


def test_node_url_keeps_the_seeds_scheme_and_credentials() -> None:
    assert node_url("redis://a:1,redis://b:2", "10.0.0.7", 7001) == "redis://10.0.0.7:7001"
    assert node_url("rediss://u:p@a:1/0", "h", "7002") == "rediss://u:p@h:7002"
    assert node_url("redis://a:1", "::1", 7003) == "redis://[::1]:7003"


async def test_messages_from_every_master_arrive_in_order_and_at_once(cluster_url: str, rc: RedisCluster) -> None:
    channels = some_channels()
    owners = {rc.get_node_from_key(ch).name for ch in channels}  # type: ignore[union-attr]
    assert len(owners) == 3, owners  # the test means something only if every master holds some
    rec = Recorder()
    hub = await open_hub(cluster_url, rec)
    try:
        for ch in channels:
            assert await hub.acquire(ch)
        await wait_subscribers(rc, channels, 1)
        for i in range(3):
            for ch in channels:
                assert await spublish(rc, ch, f"{ch}|{i}") == 1
        await rec.until(lambda: len(rec.got) == 3 * len(channels), 10, "every message")
        for ch in channels:
            assert rec.of(ch) == [f"{ch}|{i}".encode() for i in range(3)]
        assert hub.messages == 3 * len(channels)

        # One reader per master: a message on one master does not wait for the others' (idle) connections.
        lat: list[float] = []
        for ch in channels[:9]:
            await asyncio.sleep(0.3)
            n = len(rec.got)
            t0 = time.monotonic()
            await spublish(rc, ch, "ping")
            await rec.until(lambda n=n: len(rec.got) > n, 5, f"the ping on {ch}")
            lat.append(rec.got[n][2] - t0)
        assert statistics.median(lat) < 0.25, lat
        assert rec.resubscribed == 0 and hub.reconnect_failures == 0
    finally:
        await hub.stop()


async def test_reference_counting_and_unsubscribe(cluster_url: str, rc: RedisCluster) -> None:
    ch = KS.md_channel("bbo", "okx", "BTCUSDT")
    other = user_events_channel("42")
    rec = Recorder()
    hub = await open_hub(cluster_url, rec)
    try:
        assert await hub.acquire(ch) is True
        assert await hub.acquire(ch) is False
        assert await hub.acquire(other) is True
        assert hub.channels == {ch: 2, other: 1}
        await wait_subscribers(rc, [ch, other], 1)
        assert await hub.release(ch) is False
        assert await spublish(rc, ch, "still") == 1
        await rec.until(lambda: rec.of(ch) == [b"still"], 5, "a message on the channel still held")

        assert await hub.release(ch) is True
        await wait_subscribers(rc, [ch], 0)
        assert await spublish(rc, ch, "gone") == 0
        assert hub.channels == {other: 1}

        # Released and acquired again at once: the SUNSUBSCRIBE's reply comes after the new SSUBSCRIBE was sent,
        # and is told apart from one the server sends of its own accord (which would mean a resubscription).
        for _ in range(5):
            assert await hub.acquire(ch) is True
            assert await hub.release(ch) is True
        assert await hub.acquire(ch) is True
        await wait_subscribers(rc, [ch], 1)
        assert await spublish(rc, ch, "back") == 1
        assert await spublish(rc, other, "user") == 1
        await rec.until(lambda: rec.of(ch)[-1:] == [b"back"] and rec.of(other) == [b"user"], 5, "both channels")
        await asyncio.sleep(0.3)
        assert rec.resubscribed == 0 and rec.of(ch) == [b"still", b"back"]
    finally:
        await hub.stop()


async def test_a_moved_reply_sends_the_channel_to_the_slots_master(cluster_url: str, rc: RedisCluster) -> None:
    """The hub's slot map names the wrong master for a slot (as after a migration it has not heard of): that node
    answers the SSUBSCRIBE with MOVED, the hub reads the slot map again and subscribes on the slot's master. The
    connection that got the MOVED is fine: it stays, with its other channel."""
    ch, other = KS.md_channel("bbo", "okx", "BTCUSDT"), KS.md_channel("bbo", "okx", "ETHUSDT")
    owner, wrong = rc.get_node_from_key(ch), rc.get_node_from_key(other)
    assert owner is not None and wrong is not None and owner.name != wrong.name
    rec = Recorder()
    hub = await open_hub(cluster_url, rec)
    try:
        await hub.acquire(other)
        await wait_subscribers(rc, [other], 1)
        link = hub._conn._links[wrong.name]  # type: ignore[attr-defined]
        nodes = hub._conn._cluster.nodes_manager  # type: ignore[attr-defined]
        nodes.slots_cache[rc.keyslot(ch)] = [nodes.get_node(node_name=wrong.name)]
        await hub.acquire(ch)
        await wait_subscribers(rc, [ch], 1)
        assert await spublish(rc, ch, "found") == 1 and await spublish(rc, other, "kept") == 1
        await rec.until(lambda: rec.of(ch) == [b"found"] and rec.of(other) == [b"kept"], 5, "both channels")
        assert rec.resubscribed == 1 and hub.reconnect_failures == 0
        assert hub._conn._links[wrong.name] is link and link.channels == {other}  # type: ignore[attr-defined]
    finally:
        await hub.stop()


async def every_channel_delivers(rc: RedisCluster, rec: Recorder, channels: Sequence[str], tag: str,
                                 within: float = 30.0) -> float:
    """Publish ``<tag>`` on every channel until each has delivered it; the seconds it took."""
    t0 = time.monotonic()
    todo = set(channels)
    while todo:
        assert time.monotonic() - t0 < within, f"no {tag} message on {sorted(todo)[:3]}... within {within}s"
        for ch in sorted(todo):
            await spublish(rc, ch, tag)
        await asyncio.sleep(0.1)
        todo = {ch for ch in todo if tag.encode() not in rec.of(ch)}
    return time.monotonic() - t0


def master_of(c: EmbeddedCluster, rc: RedisCluster, channel: str) -> EmbeddedNode:
    node = rc.get_node_from_key(channel)
    assert node is not None
    return c.node_by_port(int(node.port))


async def test_the_hub_follows_master_failovers() -> None:
    """A manual failover (the demoted master sends ``sunsubscribe``) then a crash (the connection is lost): each
    time every channel is subscribed again on its slot's new master, ``on_resubscribed`` is called, and the
    channels of the other masters kept their connection. A private cluster: the session one stays as formed."""
    channels = some_channels()
    async with EmbeddedCluster(3, 1) as c:
        rc = connect_cluster(c.urls)
        await rc.initialize()
        rec = Recorder()
        hub = await open_hub(c.urls, rec)
        try:
            for ch in channels:
                await hub.acquire(ch)
            await wait_subscribers(rc, channels, 1)
            await every_channel_delivers(rc, rec, channels, "before")

            first = master_of(c, rc, channels[0])
            moved = [ch for ch in channels if master_of(c, rc, ch) is first]
            await asyncio.to_thread(c.failover, c.replicas_of(first)[0])
            took = await every_channel_delivers(rc, rec, channels, "after-failover")
            assert rec.resubscribed >= 1
            await rc.nodes_manager.initialize()
            assert all(master_of(c, rc, ch) is not first for ch in moved)
            await wait_subscribers(rc, channels, 1)
            print(f"manual failover: every channel delivering again after {took:.2f}s")

            second = next(m for m in c.masters if m is not first)  # still a master: only `first` swapped
            before = rec.resubscribed
            c.kill(second)
            took = await every_channel_delivers(rc, rec, channels, "after-crash")
            assert rec.resubscribed > before and hub.reconnect_failures >= 1
            print(f"master killed: every channel delivering again after {took:.2f}s")

            # One subscription per channel, wherever it moved: a message published once arrives once.
            await rc.nodes_manager.initialize()
            await wait_subscribers(rc, channels, 1)
            for ch in channels:
                await spublish(rc, ch, "once")
            await rec.until(lambda: all(rec.of(ch)[-1:] == [b"once"] for ch in channels), 10, "the last message")
            await asyncio.sleep(0.2)
            assert all(rec.of(ch).count(b"once") == 1 for ch in channels)
        finally:
            await hub.stop()
            await rc.aclose()
