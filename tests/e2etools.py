"""Helpers for the end-to-end tests: real ingestor processes, and a pub/sub subscriber that keeps what it saw.

    async with MdSink.open(redis_url) as sink, ingestor_processes(redis_url, sim, tmp_path) as procs:
        await sim.okx.push_bbo("BTCUSDT", bid="60000.1", ask="60000.2")
        msg = await sink.wait(lambda ch, m: ch == "md:bbo:okx:BTCUSDT")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import redis.asyncio as aioredis

from shared import names
from shared.pubsub import RedisHub
from shared.redis_conn import connect_cluster
from shared.schema import FeedStatus, Message, decode
from shared.settings import DEFAULT_CONFIG, ROOT
from simulator import Simulator

# Short timings so that every fault resolves in about a second (the defaults are for real exchanges).
FAST_ENV = {
    "SR_FEEDS__STALE_AFTER_S": "1.0",
    "SR_FEEDS__IDLE_TIMEOUT_S": "1.5",
    "SR_FEEDS__BACKOFF_INITIAL_S": "0.05",
    "SR_FEEDS__BACKOFF_MAX_S": "0.3",
    "SR_FEEDS__STABLE_AFTER_S": "30",
    "SR_OKX__PING_AFTER_S": "0.4",
    "LOG_LEVEL": "INFO",
}

Pred = Callable[[str, Message], bool]


class MdSink:
    """Records every market-data message (channel, decoded message) in arrival order: on one server by pattern
    (``md:*``); on a cluster (no patterns) the explicit ``channels``, through the shared hub's sharded pub/sub."""

    def __init__(self, keyspace: names.Keyspace = names.SINGLE) -> None:
        self.keyspace = keyspace
        self.items: list[tuple[str, Message]] = []
        self.raw: list[tuple[str, bytes]] = []
        self._new = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, redis_url: str, pattern: str = "md:*", *, cluster: bool = False,
                   channels: Iterable[str] = ()) -> AsyncIterator[MdSink]:
        if cluster:
            async with cls._sharded(redis_url, list(channels)) as sink:
                yield sink
            return
        r = aioredis.Redis.from_url(redis_url)
        sink = cls()
        ps = r.pubsub()
        await ps.psubscribe(pattern)
        sink._task = asyncio.create_task(sink._read(ps))
        try:
            yield sink
        finally:
            sink._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sink._task
            await ps.aclose()
            await r.aclose()

    @classmethod
    @contextlib.asynccontextmanager
    async def _sharded(cls, redis_url: str, channels: list[str]) -> AsyncIterator[MdSink]:
        assert channels, "a cluster has no pattern subscriptions: name the channels"
        sink = cls(names.Keyspace(cluster=True))
        hub = RedisHub(redis_url, True, sink._record)
        await hub.start()
        try:
            for ch in channels:
                await hub.acquire(ch)
            await wait_shard_subscribers(redis_url, channels)
            yield sink
        finally:
            await hub.stop()

    async def _read(self, ps: aioredis.client.PubSub) -> None:
        while True:
            m = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if m is None or m["type"] != "pmessage":
                continue
            self._record(m["channel"].decode(), m["data"])

    def _record(self, channel: str, data: bytes) -> None:
        self.raw.append((channel, data))
        self.items.append((channel, decode(data)))
        self._new.set()

    def mark(self) -> int:
        """A position: ``wait(..., since=mark)`` only looks at messages that arrived after it."""
        return len(self.items)

    def find(self, pred: Pred, since: int = 0) -> list[Message]:
        return [m for ch, m in self.items[since:] if pred(ch, m)]

    async def wait(self, pred: Pred, within: float = 10.0, since: int = 0) -> Message:
        """The first message (from ``since`` on) matching ``pred``, waiting up to ``within`` seconds."""
        i = since
        async with asyncio.timeout(within):
            while True:
                while i < len(self.items):
                    ch, m = self.items[i]
                    i += 1
                    if pred(ch, m):
                        return m
                self._new.clear()
                if i == len(self.items):
                    await self._new.wait()

    async def status(self, exchange: str, state: str, within: float = 10.0, since: int = 0) -> FeedStatus:
        ch = self.keyspace.status_channel(exchange)
        try:
            m = await self.wait(lambda c, m: c == ch and isinstance(m, FeedStatus) and m.state == state, within,
                                since)
        except TimeoutError:
            seen = [(m.state, m.reason) for c, m in self.items[since:] if c == ch and isinstance(m, FeedStatus)]
            raise AssertionError(f"no {state!r} status from {exchange} within {within}s; saw {seen[-5:]}") from None
        assert isinstance(m, FeedStatus)
        return m


def is_md(kind: str, exchange: str, symbol: str, keyspace: names.Keyspace = names.SINGLE) -> Pred:
    ch = keyspace.md_channel(kind, exchange, symbol)
    return lambda c, m: c == ch


async def wait_shard_subscribers(redis_url: str, channels: Iterable[str], n: int = 1, within: float = 10.0) -> None:
    """Every shard channel has at least ``n`` subscribers on the master of its slot (``PUBSUB SHARDNUMSUB``)."""
    rc = connect_cluster(redis_url)
    try:
        await rc.initialize()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        for ch in channels:
            node = rc.get_node_from_key(ch)
            assert node is not None
            while (await rc.pubsub_shardnumsub(ch, target_nodes=node))[0][1] < n:
                assert loop.time() < deadline, f"{ch}: fewer than {n} subscriber(s) on its master"
                await asyncio.sleep(0.05)
    finally:
        await rc.aclose()


async def wait_until(cond: Callable[[], Awaitable[bool]] | Callable[[], bool], within: float = 10.0,
                     what: str = "condition") -> None:
    """Poll ``cond`` (sync or async) every 20 ms until true; fail with ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        res = cond()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


async def feed_hash(redis: aioredis.Redis, exchange: str) -> dict[str, str]:
    raw = await redis.hgetall(names.status_key(exchange))  # type: ignore[misc]
    return {k.decode(): v.decode() for k, v in raw.items()}


def process_env(redis_url: str, sim: Simulator | None = None, *, cluster: bool = False, **env: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SR_") and k != "REDIS_CLUSTER"}
    out.update(FAST_ENV)
    out.update(REDIS_URL=redis_url, SR_CONFIG=str(DEFAULT_CONFIG), PYTHONUNBUFFERED="1")
    if cluster:
        out["REDIS_CLUSTER"] = "1"
    if sim is not None:
        out.update(BINANCE_WS_URL=sim.binance_url, OKX_WS_URL=sim.okx_url)
    out.update(env)
    return out


class Procs:
    def __init__(self) -> None:
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.logs: dict[str, Path] = {}

    def alive(self, name: str) -> bool:
        return self.procs[name].returncode is None

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")


@contextlib.asynccontextmanager
async def ingestor_processes(redis_url: str, sim: Simulator | None, log_dir: Path,
                             exchanges: Iterable[str] = ("binance", "okx"), check_exit: bool = True,
                             cluster: bool = False, **env: str) -> AsyncIterator[Procs]:
    """``python -m ingestor <ex>`` for each exchange, pointed at ``sim`` (on a Redis Cluster with ``cluster``: the
    seeds in ``redis_url``); SIGTERM (then SIGKILL) on the way out.

    With ``check_exit`` every process must still be running at the end and exit 0 on SIGTERM.
    """
    procs = Procs()
    penv = process_env(redis_url, sim, cluster=cluster, **env)
    try:
        for ex in exchanges:
            path = log_dir / f"ingestor-{ex}.log"
            procs.logs[ex] = path
            with path.open("wb") as f:
                procs.procs[ex] = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "ingestor", ex, env=penv, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
                    stdout=f, stderr=asyncio.subprocess.STDOUT)
        yield procs
        if check_exit:
            for ex, p in procs.procs.items():
                assert p.returncode is None, f"ingestor {ex} died (rc {p.returncode}):\n{procs.log(ex)[-3000:]}"
    finally:
        for p in procs.procs.values():
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        for ex, p in procs.procs.items():
            try:
                codes[ex] = await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                codes[ex] = await p.wait()
    if check_exit:
        for ex, rc in codes.items():
            assert rc == 0, f"ingestor {ex} exited with {rc}:\n{procs.log(ex)[-3000:]}"
