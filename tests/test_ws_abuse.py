"""WebSocket abuse against ``python -m gateway`` as a real process (docs/gateway-ws.md, "Abuse").

Each abuse runs while a well-behaved client receives a trade stream: it must get every trade, in order. The
stopped-client test pauses whole client processes (``tests.ws_sink``) with SIGSTOP while market data flows and
checks that the gateway drops them, that its RSS stays bounded and that the good client misses nothing.
``make soak-ws`` runs that test longer with more stopped clients (``SR_SOAK_WS_*`` below).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import redis.asyncio as aioredis

from shared.embedded_redis import EmbeddedRedis
from shared.settings import ROOT
from tests.gateway_proc import GatewayProc, gateway_process
from tests.mdfeed import MdFeed
from tests.wsclient import Client, token, ws_client, ws_url

SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT,XRPUSDT,DOGEUSDT"  # config/config.toml's pairs (python -m gateway reads it)
N_STOPPED = int(os.environ.get("SR_SOAK_WS_STOPPED", "1"))  # stopped client processes
SOAK_S = float(os.environ.get("SR_SOAK_WS_SECONDS", "0"))  # keep the feed going this long (0: until dropped)
PAD = "p" * 2000  # trade ids this long make ~2.2 KB frames: the kernel buffers fill within a few thousand trades


async def wait_for(cond: Callable[[], bool], within: float, what: str, every: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(every)


class Observer:
    """A well-behaved client on ``trades:BTCUSDT:all`` and a feed of numbered trades: nothing may be lost."""

    def __init__(self, client: Client, feed: MdFeed) -> None:
        self.client = client
        self.feed = feed
        self.ids: list[int] = []
        self.published = 0
        self.closed: BaseException | None = None

    async def read(self) -> None:
        try:
            while True:
                m = await self.client.recv(60)
                if m["type"] == "trades":
                    self.ids.append(int(m["data"]["trade_id"].split("-", 1)[0]))
        except BaseException as e:  # noqa: BLE001 - recorded, checked by the test
            self.closed = e

    async def publish(self, n: int, pad: str = "", max_lag: int = 200) -> None:
        """``n`` more trades, never more than ``max_lag`` ahead of what the observer has received."""
        for _ in range(n):
            while self.published - len(self.ids) >= max_lag:
                assert self.closed is None, f"the well-behaved client was closed: {self.closed!r}"
                await asyncio.sleep(0.005)
            ex = "binance" if self.published % 2 else "okx"
            await self.feed.trade(ex, "BTCUSDT", "64000.1", "0.01", trade_id=f"{self.published}-{pad}")
            self.published += 1

    async def check(self) -> None:
        await wait_for(lambda: len(self.ids) >= self.published or self.closed is not None, 30, "the observer")
        assert self.closed is None, f"the well-behaved client was closed: {self.closed!r}"
        assert self.ids == list(range(self.published)), "gap or reordering in the well-behaved client's trades"


@contextlib.asynccontextmanager
async def observed(gw: GatewayProc, aredis: aioredis.Redis, rate: float = 200) -> AsyncIterator[Observer]:
    """An ``Observer`` fed ``rate`` trades/s in the background while the body runs; checked at the end."""
    async with ws_client(gw.url, tok=token("observer")) as c:
        await c.subscribe(stream="trades", symbol="BTCUSDT", exchange="all")
        obs = Observer(c, MdFeed(aredis))
        reader = asyncio.create_task(obs.read())

        async def feed() -> None:
            while True:
                await obs.publish(10)
                await asyncio.sleep(10 / rate)

        feeder = asyncio.create_task(feed())
        try:
            yield obs
            await obs.publish(10)
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        try:
            await obs.check()
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader


# -- a client that stops reading -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sinks(gw: GatewayProc, n: int, rcvbuf: int) -> AsyncIterator[list[tuple[asyncio.subprocess.Process, int]]]:
    """``n`` ``tests.ws_sink`` processes subscribed to everything: (process, its local port)."""
    procs: list[asyncio.subprocess.Process] = []
    out: list[tuple[asyncio.subprocess.Process, int]] = []
    try:
        for i in range(n):
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.ws_sink", "--url", ws_url(gw.url), "--token", token(f"sink{i}"),
                "--symbols", SYMBOLS, "--rcvbuf", str(rcvbuf), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                start_new_session=True)
            procs.append(p)
        for p in procs:
            assert p.stdout is not None
            line = (await asyncio.wait_for(p.stdout.readline(), 60)).decode()
            assert line.startswith("READY "), line
            out.append((p, int(line.split()[1])))
        yield out
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                    p.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 10)


async def test_stopped_client_is_dropped_memory_bounded_others_unaffected(redis_server: EmbeddedRedis,
                                                                         tmp_path: Path) -> None:
    redis_url = redis_server.url
    aredis = aioredis.Redis.from_url(redis_url)
    queue_max = 500
    env = {"SR_WS__QUEUE_MAX": str(queue_max), "SR_WS__MAX_SUBSCRIPTIONS": "200"}
    try:
        with gateway_process(redis_url, tmp_path, **env) as gw:
            feed = MdFeed(aredis)
            async with feed.heartbeats("binance", "okx"), sinks(gw, N_STOPPED, rcvbuf=0 if SOAK_S else 65536) as ss, \
                    ws_client(gw.url, tok=token("good")) as good:
                await good.subscribe(stream="trades", symbol="BTCUSDT", exchange="all")
                obs = Observer(good, feed)
                reader = asyncio.create_task(obs.read())
                ports = {port for _, port in ss}
                assert ports <= gw.peer_ports()
                await obs.publish(50)  # everything warmed up (klines, ewma, frames) before the baseline
                await obs.check()
                baseline = gw.rss_kb()
                peak = baseline
                for p, _ in ss:
                    os.kill(p.pid, signal.SIGSTOP)

                async def sample() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, gw.rss_kb())
                        await asyncio.sleep(0.05)

                sampler = asyncio.create_task(sample())
                loop = asyncio.get_running_loop()
                start = loop.time()
                try:
                    while ports & gw.peer_ports() or loop.time() - start < SOAK_S:
                        assert loop.time() - start < max(90, SOAK_S + 60), (
                            f"stopped clients still connected: {ports & gw.peer_ports()}, "
                            f"slow closes {gw.metric('sr_gateway_ws_slow_closes_total')}")
                        await obs.publish(100, PAD)
                        for sym in ("ETHUSDT", "SOLUSDT"):  # conflated streams too
                            await feed.bbo("okx", sym, f"{obs.published % 97 + 100}", "1", "300", "2")
                        assert gw.alive()
                    await obs.check()
                finally:
                    sampler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
                    reader.cancel()
                assert gw.metric("sr_gateway_ws_slow_closes_total", code="4008") >= N_STOPPED
                growth_mb = (peak - baseline) / 1024
                bound_mb = 50 + 5 * N_STOPPED
                print(f"\nstopped clients {N_STOPPED}: RSS baseline {baseline / 1024:.1f} MB, peak "
                      f"{peak / 1024:.1f} MB (+{growth_mb:.1f}, bound +{bound_mb}), {obs.published} trades, "
                      f"dropped after {loop.time() - start:.1f} s")
                assert growth_mb < bound_mb
    finally:
        await aredis.aclose()
