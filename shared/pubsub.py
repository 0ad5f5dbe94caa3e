"""Redis pub/sub for a whole process: one hub shared by every subscriber in it, on one server or on a Redis Cluster.

Channels are reference-counted: the first ``acquire`` subscribes, the last ``release`` unsubscribes. Every message
goes to one ``dispatch`` callable, which must not block (the gateway's market-data streams and order events only
append to client queues or resolve futures, the matcher queues). Once a subscription that was lost is back,
``on_resubscribed`` is called: what was published in between never arrives (consumers reload their snapshots and
tell their clients).

- **One server**: one connection, ``SUBSCRIBE``, one reader task; a lost connection is replaced by a fresh one
  subscribed to every wanted channel.
- **Redis Cluster**: sharded pub/sub. A shard channel lives on the master that owns its slot: ``SSUBSCRIBE`` there
  (no patterns), published with ``SPUBLISH``. The hub holds one plain pub/sub connection per master itself, each
  with its own reader task, rather than redis-py's ``ClusterPubSub``: that one (8.1) reads its node connections in
  turn, waiting the read timeout on each, so a quiet master delays every message of the others. Channels are
  grouped by slot (one ``SSUBSCRIBE`` per slot, as the command requires) and placed on the slot's master. A lost
  connection, an error reply (``MOVED``: the slot left before we heard) or an ``sunsubscribe`` the hub did not ask
  for (the server sends one when a slot migrates or its master fails over) makes it read the slot map again and
  subscribe every wanted channel on the right master; the others' connections are left alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MovedError

from shared.redis_conn import connect, connect_cluster, ready, seeds

log = logging.getLogger(__name__)

Dispatch = Callable[[str, bytes], None]
CONFIRM_S = 2.0  # how long ``acquire`` waits for the server to confirm a subscription it sent


class RedisHub:
    """One per process and purpose; ``cluster``: sharded pub/sub on a Redis Cluster (the module's docstring)."""

    def __init__(self, redis_url: str, cluster: bool, dispatch: Dispatch,
                 on_resubscribed: Callable[[], None] | None = None) -> None:
        self._dispatch = dispatch
        self._on_resubscribed = on_resubscribed
        self._refs: dict[str, int] = {}
        self._confirmed: dict[str, asyncio.Event] = {}  # the server's (s)subscribe reply, awaited by ``acquire``
        self._conn: _Subscriber = _Sharded(self, redis_url) if cluster else _Single(self, redis_url)
        self.messages = 0
        self.reconnect_failures = 0

    @property
    def channels(self) -> dict[str, int]:
        return dict(self._refs)

    async def start(self) -> None:
        await self._conn.start()

    async def stop(self) -> None:
        await self._conn.stop()

    async def acquire(self, channel: str) -> bool:
        """Count one more user of ``channel``; True when this call subscribed it."""
        n = self._refs.get(channel, 0) + 1
        self._refs[channel] = n
        if n == 1:
            # Sending SUBSCRIBE is not having it: until the server's reply, a PUBLISH on another connection may be
            # processed first and missed (a client acked on "subscribed" would lose the order event that follows).
            confirmed = self._confirmed[channel] = asyncio.Event()
            if await self._conn.sync(channel):
                with contextlib.suppress(TimeoutError):  # a connection lost meanwhile: the repair resubscribes
                    await asyncio.wait_for(confirmed.wait(), CONFIRM_S)
            if self._confirmed.get(channel) is confirmed:  # not sent, or no reply in time: nobody else waits
                del self._confirmed[channel]
        elif (pending := self._confirmed.get(channel)) is not None:  # another user's subscribe is in flight
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.wait(), CONFIRM_S)
        return n == 1

    async def release(self, channel: str) -> bool:
        """One user fewer; True when this call unsubscribed the channel."""
        n = self._refs.get(channel, 0) - 1
        if n > 0:
            self._refs[channel] = n
            return False
        self._refs.pop(channel, None)
        self._confirmed.pop(channel, None)
        await self._conn.sync(channel)
        return True

    def _subscribed(self, channel: str) -> None:
        ev = self._confirmed.pop(channel, None)
        if ev is not None:
            ev.set()

    def _deliver(self, channel: str, data: bytes) -> None:
        self.messages += 1
        try:
            self._dispatch(channel, data)
        except Exception:  # a bad message must never kill a reader
            log.exception("fan-out dispatch failed")

    def _resubscribed(self) -> None:
        if self._on_resubscribed is not None:
            try:
                self._on_resubscribed()
            except Exception:
                log.exception("on_resubscribed failed")


class _Subscriber(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def sync(self, channel: str) -> bool:
        """Subscribe or unsubscribe ``channel`` as the hub now wants it; True when a subscribe went out (its
        confirmation will reach ``RedisHub._subscribed``). Never raises: a failure is repaired by the reader, which
        resubscribes what is wanted."""


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


# --- one server ---------------------------------------------------------------------------------------------


class _Single:
    def __init__(self, hub: RedisHub, url: str) -> None:
        self._hub = hub
        self._url = url
        self._subscribed: set[str] = set()
        self._lock = asyncio.Lock()
        self._has_channels = asyncio.Event()
        self._redis: aioredis.Redis | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._dirty = False  # the connection may hold fewer channels than wanted: the reader reconnects

    async def start(self) -> None:
        self._redis = connect(self._url)
        self._pubsub = self._redis.pubsub()
        self._task = asyncio.create_task(self._reader(), name="redis-hub-reader")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._pubsub:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._redis:
            await self._redis.aclose()

    async def sync(self, channel: str) -> bool:
        # Re-check under the lock: an acquire and a release of one channel may race.
        sent = False
        async with self._lock:
            assert self._pubsub is not None
            refs = self._hub._refs
            wanted = channel in refs
            try:
                if wanted and channel not in self._subscribed:
                    await self._pubsub.subscribe(channel)
                    self._subscribed.add(channel)
                    sent = True
                elif not wanted and channel in self._subscribed:
                    self._subscribed.discard(channel)
                    await self._pubsub.unsubscribe(channel)
            except Exception as e:  # the reader reconnects and subscribes what is wanted
                # Not only RedisError: the reader shares this connection, and when it loses it first redis-py's
                # half-torn state shows here as AttributeError or RuntimeError.
                log.warning("redis (un)subscribe %s failed: %r", channel, e)
                self._dirty = True
            # The reader follows what is *wanted*: a channel whose subscribe failed must still bring it to
            # reconnect, or that channel would never be subscribed.
            if refs:
                self._has_channels.set()
            else:
                self._has_channels.clear()
        return sent

    async def _reader(self) -> None:
        backoff = 0.2
        while True:
            # redis-py does not read a pub/sub connection that has no channel: wait for the first one.
            await self._has_channels.wait()
            try:
                assert self._pubsub is not None
                # A lost connection or a failed (re)subscribe: a fresh connection with every wanted channel.
                # (get_message on a pub/sub that never subscribed raises RuntimeError at once: a busy loop.)
                if self._dirty or self._pubsub.connection is None:
                    await self._reconnect()
                    self._hub._resubscribed()
                msg = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # RedisError, OSError, or redis-py's state broken by the loss
                self._dirty = True
                self._hub.reconnect_failures += 1
                log.warning("redis pub/sub connection lost (%r); reconnecting in %.1fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            if msg is None:
                continue
            if msg["type"] == "message":
                self._hub._deliver(_text(msg["channel"]), msg["data"])
            elif msg["type"] == "subscribe":
                self._hub._subscribed(_text(msg["channel"]))

    async def _reconnect(self) -> None:
        """A new pub/sub connection subscribed to every wanted channel; raises (and stays dirty) on failure."""
        async with self._lock:
            old = self._pubsub
            assert self._redis is not None
            self._pubsub = self._redis.pubsub()
            self._subscribed.clear()
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.aclose()
            refs = self._hub._refs
            if refs:
                await self._pubsub.subscribe(*refs)
                self._subscribed.update(refs)
            self._dirty = False


# --- Redis Cluster ------------------------------------------------------------------------------------------


def node_url(url: str, host: str, port: int | str) -> str:
    """The first seed's URL (scheme, credentials) pointed at one node."""
    parts = urlsplit(seeds(url)[0])
    auth, _, _ = parts.netloc.rpartition("@")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{auth}@{where}" if auth else where, path=""))


class _Link:
    """One pub/sub connection to one master and the shard channels subscribed on it."""

    def __init__(self, node: ClusterNode, url: str) -> None:
        self.node = node.name
        self.redis = connect(node_url(url, node.host, node.port))
        # No quiet reconnect inside redis-py (it would resubscribe on a node that may no longer own the slots):
        # a lost connection surfaces, and the hub places the channels again.
        self.redis.set_retry(Retry(NoBackoff(), 0))
        self.pubsub = self.redis.pubsub()
        self.channels: set[str] = set()
        self.leaving: collections.Counter[str] = collections.Counter()  # SUNSUBSCRIBEs sent, replies not read
        self.task: asyncio.Task[None] | None = None
        self.lost = False

    async def subscribe(self, channels: list[str]) -> None:
        await self.pubsub.ssubscribe(*channels)
        self.channels.update(channels)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        self.leaving[channel] += 1
        await self.pubsub.sunsubscribe(channel)

    def unsubscribed(self, channel: str) -> bool:
        """The server's ``sunsubscribe`` for ``channel``: True when it answers one of ours."""
        if self.leaving[channel] > 0:
            self.leaving[channel] -= 1
            if not self.leaving[channel]:
                del self.leaving[channel]
            return True
        return False

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.redis.aclose()


class _Sharded:
    def __init__(self, hub: RedisHub, url: str) -> None:
        self._hub = hub
        self._url = url
        self._cluster: RedisCluster | None = None  # for its slot map only
        self._links: dict[str, _Link] = {}  # node name -> link
        self._place: dict[str, _Link] = {}  # channel -> the link it is subscribed on
        self._lock = asyncio.Lock()
        self._trouble = asyncio.Event()  # something wanted may not be subscribed where it should: repair
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._cluster = connect_cluster(self._url)
        try:
            await ready(self._cluster)  # the client's own initialize: it also closes the seed nodes' connections
        except Exception as e:  # the keeper tries again
            log.warning("redis cluster slot map unavailable (%r)", e)
            self._trouble.set()
        self._keeper = asyncio.create_task(self._keep(), name="redis-hub-keeper")

    async def stop(self) -> None:
        if self._keeper:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keeper
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()
        self._place.clear()
        if self._cluster:
            await self._cluster.aclose()

    def _slot(self, channel: str) -> int:
        assert self._cluster is not None
        return self._cluster.keyslot(channel)

    def _owner(self, channel: str) -> tuple[ClusterNode, int]:
        """The master of ``channel``'s slot, by the slot map as last read, and the slot."""
        assert self._cluster is not None
        slot = self._slot(channel)
        return self._cluster.nodes_manager.get_node_from_slot(slot), slot

    async def sync(self, channel: str) -> bool:
        async with self._lock:
            wanted = channel in self._hub._refs
            link = self._place.get(channel)
            try:
                if wanted and link is None:
                    await self._subscribe(self._owner(channel)[0], [channel])
                    return True
                elif not wanted and link is not None:
                    del self._place[channel]
                    await link.unsubscribe(channel)
            except Exception as e:
                log.warning("redis (un)subscribe %s failed: %r", channel, e)
                if link is not None:
                    link.lost = True
                self._trouble.set()
        return False

    async def _subscribe(self, node: ClusterNode, channels: list[str]) -> None:
        """``SSUBSCRIBE channels`` (one slot) on ``node``'s link, opened on first use."""
        link: _Link | None = self._links.get(node.name)
        if link is not None and link.lost:
            await self._drop(link)
            link = None
        if link is None:
            link = self._links[node.name] = _Link(node, self._url)
        try:
            await link.subscribe(channels)
        except Exception:
            link.lost = True
            raise
        for ch in channels:
            self._place[ch] = link
        if link.task is None:
            link.task = asyncio.create_task(self._read(link), name=f"redis-hub-{link.node}")

    async def _drop(self, link: _Link) -> None:
        if self._links.get(link.node) is link:
            del self._links[link.node]
        for ch in [c for c, lk in self._place.items() if lk is link]:
            del self._place[ch]
        await link.close()

    async def _read(self, link: _Link) -> None:
        while True:
            try:
                msg = await link.pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except MovedError as e:  # one SSUBSCRIBE refused: that slot is elsewhere now, the connection is fine
                self._misplaced(link, [ch for ch in link.channels if self._slot(ch) == e.slot_id])
                continue
            except Exception as e:
                # A lost connection or, after a failover, redis-py's RuntimeError("pubsub connection not set"): all
                # the same, the link's channels go to their slots' masters.
                log.warning("redis pub/sub connection to %s lost (%r): resubscribing its channels", link.node, e)
                link.lost = True
                self._trouble.set()
                return
            if msg is None:
                continue
            if msg["type"] == "smessage":
                self._hub._deliver(_text(msg["channel"]), msg["data"])
            elif msg["type"] == "ssubscribe":
                self._hub._subscribed(_text(msg["channel"]))
            elif msg["type"] == "sunsubscribe":
                channel = _text(msg["channel"])
                if not link.unsubscribed(channel):  # the server's own: the slot migrated, or its master failed over
                    self._misplaced(link, [channel])

    def _misplaced(self, link: _Link, channels: list[str]) -> None:
        for channel in channels:
            link.channels.discard(channel)
            if self._place.get(channel) is link:
                del self._place[channel]
        self._trouble.set()

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        backoff, last = 0.2, -math.inf
        while True:
            await self._trouble.wait()
            if loop.time() - last < 1.0:  # again right after a round (it failed, or was undone at once): no spin
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.2
            last = loop.time()
            try:
                async with self._lock:
                    self._trouble.clear()
                    await self._replace()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a master still unreachable, the slot map not settled yet: again
                self._trouble.set()
                self._hub.reconnect_failures += 1
                log.warning("redis cluster pub/sub: resubscribing failed (%r); again in %.1fs", e, backoff)
                continue
            self._hub._resubscribed()

    async def _replace(self) -> None:
        """Lost links closed, the slot map read again, every wanted channel subscribed on its slot's master."""
        for lost in [lk for lk in self._links.values() if lk.lost]:
            await self._drop(lost)
        assert self._cluster is not None
        if self._cluster.nodes_manager.slots_cache:
            await self._cluster.nodes_manager.initialize()
        else:
            await ready(self._cluster)
        todo: dict[tuple[str, int], list[str]] = {}
        nodes: dict[str, ClusterNode] = {}
        for channel in list(self._hub._refs):
            node, slot = self._owner(channel)
            placed = self._place.get(channel)
            if placed is not None:
                if placed.node == node.name:
                    continue
                del self._place[channel]
                try:
                    await placed.unsubscribe(channel)
                except Exception:
                    placed.lost = True  # closed at the next round; the channel is placed anew right now
                    self._trouble.set()
            nodes[node.name] = node
            todo.setdefault((node.name, slot), []).append(channel)
        if todo:
            log.warning("redis cluster pub/sub: subscribing %d channel(s) on %s", sum(map(len, todo.values())),
                        ", ".join(sorted(nodes)))
        for (name, _), channels in todo.items():
            await self._subscribe(nodes[name], channels)
        for idle in [lk for lk in self._links.values() if not lk.channels]:
            await self._drop(idle)  # e.g. a master that became a replica
