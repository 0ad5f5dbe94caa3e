"""End to end with 300 pairs: the simulator (both exchanges, x0.01 flow, OKX's 3 connections/s enforced) ->
two Binance ingestor shards and one OKX ingestor (real processes), each spreading its pairs over several
connections -> real Redis -> the gateway's best_touch on /ws.

Every pair's best bid/offer of both exchanges must land in Redis; every connection must stay within its
exchange's limits. No timing asserts: every wait is bounded and generous.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis

from ingestor import okx
from shared import names
from shared.schema import BBO
from shared.settings import ROOT, Settings, load_settings
from simulator import Simulator
from simulator.binance import MAX_STREAMS
from tests.e2etools import MdSink, process_env, wait_until
from tests.ingestor_helpers import many_pairs_config
from tests.servers import make_settings, run_gateway
from tests.wsclient import token, ws_client

N_PAIRS = 300
BINANCE_MAX_STREAMS = 300  # per connection, to use several connections per shard (Binance allows 1024)
EXCHANGES = ("binance", "okx")


def _bbo_price(i: int, exchange: str) -> tuple[str, str]:
    """A distinct quote per pair and exchange, two ticks wide."""
    bid = Decimal(100) + Decimal(i) / 100 + (Decimal("0.005") if exchange == "okx" else 0)
    bid = bid.quantize(Decimal("0.01"))
    return str(bid), str(bid + Decimal("0.02"))


@contextlib.asynccontextmanager
async def processes(cmds: dict[str, list[str]], env: dict[str, str], log_dir: Path) -> AsyncIterator[dict[str, Path]]:
    """``python -m ingestor ...`` per name; SIGTERM on the way out, each must exit 0."""
    procs: dict[str, asyncio.subprocess.Process] = {}
    logs = {name: log_dir / f"{name}.log" for name in cmds}
    try:
        for name, args in cmds.items():
            with logs[name].open("wb") as f:
                procs[name] = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "ingestor", *args, env=env, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
                    stdout=f, stderr=asyncio.subprocess.STDOUT)
        yield logs
        for name, p in procs.items():
            assert p.returncode is None, f"{name} died:\n{logs[name].read_text()[-3000:]}"
    finally:
        for p in procs.values():
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                rc = await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                rc = await p.wait()
            assert rc == 0, f"{name} exited with {rc}:\n{logs[name].read_text()[-3000:]}"


async def _hash(r: aioredis.Redis, key: str) -> dict[str, str]:
    raw = await r.hgetall(key)  # type: ignore[misc]  # redis-py types hgetall as Awaitable | dict
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_300_pairs_on_both_exchanges_reach_redis_and_a_client(tmp_path: Path, redis_url: str,
                                                                     aredis: aioredis.Redis) -> None:
    cfg = many_pairs_config(tmp_path, N_PAIRS)
    settings: Settings = load_settings(cfg, env={})
    symbols = sorted(settings.symbols)
    async with Simulator(settings=settings, seed=11, rate=0.01, okx_connect_limit=okx.CONNECTS_PER_S) as sim:
        env = process_env(redis_url, sim, SR_CONFIG=str(cfg),
                          SR_BINANCE__MAX_STREAMS_PER_CONNECTION=str(BINANCE_MAX_STREAMS),
                          SR_METRICS__INGESTOR_BINANCE_PORT="0", SR_METRICS__INGESTOR_OKX_PORT="0")
        cmds = {"binance-1": ["binance", "--shard", "1/2"], "binance-2": ["binance", "--shard", "2/2"],
                "okx": ["okx"]}
        async with MdSink.open(redis_url, "md:bbo:*") as sink, processes(cmds, env, tmp_path):
            # Every stream and every (channel, instId) subscribed, on connections within the limits.
            await sim.binance.wait_for(lambda: len(sim.binance.subscriptions()) == 3 * N_PAIRS, 40)
            await sim.okx.wait_for(lambda: len(sim.okx.subscriptions()) == 3 * N_PAIRS, 40)
            # 150 pairs per shard at 300 streams per connection: 2 connections per shard.
            assert sim.binance.connection_count == 4
            assert all(len(subs) <= BINANCE_MAX_STREAMS <= MAX_STREAMS
                       for subs in sim.binance.subscriptions_by_connection())
            # 300 pairs at okx.max_args_per_connection (300 args = 100 pairs): 3 connections.
            assert sim.okx.connection_count == 3
            assert all(len(subs) <= settings.okx.max_args_per_connection
                       for subs in sim.okx.subscriptions_by_connection())

            # A distinct quote for every pair on both exchanges.
            for ex in EXCHANGES:
                server = sim.server(ex)
                for sym in symbols:
                    bid, ask = _bbo_price(int(sym[1:4]), ex)
                    await server.push_bbo(sym, bid=bid, ask=ask, book=False)

            def pushed_seen() -> bool:
                got = {(m.exchange, m.symbol) for _, m in sink.items
                       if isinstance(m, BBO) and (str(m.bid_px.normalize()), str(m.ask_px.normalize())) ==
                       tuple(str(Decimal(x).normalize()) for x in _bbo_price(int(m.symbol[1:4]), m.exchange))}
                return len(got) == 2 * N_PAIRS

            await wait_until(pushed_seen, 30, "the pushed bbo of every pair of both exchanges on md:bbo:*")
            keys = [names.md_last_key("bbo", ex, sym) for ex in EXCHANGES for sym in symbols]
            assert None not in await aredis.mget(keys)

            # Each process's status: its own hash, every connection up.
            async def all_up() -> bool:
                hs = [await _hash(aredis, k) for k in ("md:feed:binance:1/2", "md:feed:binance:2/2",
                                                       names.status_key("okx"))]
                return all(h.get("state") == "up" and h.get("connections_up") == h.get("connections") for h in hs)

            await wait_until(all_up, 20, "every ingestor up on every connection")
            for shard in ("1/2", "2/2"):
                h = await _hash(aredis, f"md:feed:binance:{shard}")
                assert (h["pairs"], h["connections"], h["shard"]) == ("150", "2", shard)
                assert int(h["conn1_subscriptions"]) + int(h["conn2_subscriptions"]) == 450
            h = await _hash(aredis, names.status_key("okx"))
            assert (h["pairs"], h["connections"], h["shard"]) == ("300", "3", "")
            assert not await aredis.exists(names.status_key("binance"))  # sharded: no shard owns the plain key

            # Within the exchanges' limits the whole time.
            assert sim.binance.rate_limit_closes == 0  # never over 5 incoming messages/s on a connection
            assert sim.okx.connect_refusals == 0  # never over 3 connections/s
            assert max(sim.okx.requests_by_conn.values()) <= okx.MAX_REQUESTS_PER_HOUR
            # 225 streams per connection: the URL holds what fits in binance.MAX_URL_CHARS, SUBSCRIBE the rest.
            assert sim.binance.messages_received >= 4

            # A client: best_touch through the gateway for a sample of pairs, both shards' included.
            sample = ["P000USDT", "P001USDT", "P150USDT", "P298USDT", "P299USDT"]
            gw = make_settings(redis_url, SR_CONFIG=str(cfg))
            async with run_gateway(redis_url, gw) as base, ws_client(base, tok=token()) as c:
                for sym in sample:
                    await c.subscribe(stream="best_touch", symbol=sym, exchange="all")
                live: set[str] = set()
                while live != set(sample):
                    m = await c.until(lambda m: m["type"] == "best_touch", 20)
                    d = m["data"]
                    if sorted(d["live"]) == list(EXCHANGES) and d["bid_px"] is not None and d["ask_px"] is not None:
                        live.add(d["symbol"])
