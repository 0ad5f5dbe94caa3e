"""End to end: the real simulator -> the real ingestors (processes) -> real Redis -> a pub/sub subscriber.

Prices are pushed with the random walk paused, so every value that reaches Redis can be checked exactly.
"""

from __future__ import annotations

import asyncio
import gzip
import signal
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from shared import names
from shared.embedded_cluster import EmbeddedCluster
from shared.redis_conn import connect_any
from shared.schema import BBO, Book, FeedStatus, Trade, decode
from shared.settings import ROOT, load_settings
from simulator import Simulator
from tests.e2etools import FAST_ENV, MdSink, feed_hash, ingestor_processes, is_md, process_env, wait_until
from tests.servers import run_gateway
from tests.simtools import SETTINGS
from tests.wsclient import token, ws_client

# (bid, ask, trade price) per pair, on the pair's tick; OKX quotes one tick apart from Binance.
QUOTES = {
    "BTCUSDT": ("60000.10", "60000.25", "60000.25"),
    "ETHUSDT": ("3000.11", "3000.13", "3000.11"),
    "SOLUSDT": ("150.01", "150.02", "150.02"),
    "XRPUSDT": ("0.6001", "0.6003", "0.6001"),
    "DOGEUSDT": ("0.12001", "0.12004", "0.12004"),
}
SIZES = {"BTCUSDT": "0.01234", "ETHUSDT": "1.5", "SOLUSDT": "12.345", "XRPUSDT": "100.5", "DOGEUSDT": "2500"}
OKX_INSTS = [p.okx for p in SETTINGS.pairs]


def quote_for(exchange: str, symbol: str) -> tuple[str, str, str]:
    bid, ask, px = QUOTES[symbol]
    if exchange == "binance":
        return bid, ask, px
    tick = SETTINGS.pair(symbol).tick_size  # type: ignore[union-attr]
    return str(Decimal(bid) - tick), str(Decimal(ask) + tick), str(Decimal(px) + tick)


async def wait_subscribed(sim: Simulator, within: float = 15.0) -> None:
    await sim.binance.wait_connections(1, within)
    for inst in OKX_INSTS:
        for ch in ("bbo-tbt", "books5", "trades"):
            await sim.okx.wait_subscribed((ch, inst), within)


async def test_every_pair_of_both_exchanges_arrives_exactly(tmp_path: Path, redis_url: str,
                                                            aredis: aioredis.Redis) -> None:
    async with Simulator(settings=SETTINGS, seed=7) as sim, MdSink.open(redis_url) as sink:
        sim.pause()
        async with ingestor_processes(redis_url, sim, tmp_path) as procs:
            await wait_subscribed(sim)
            assert sim.binance.subscriptions() == {f"{p.binance.lower()}@{s}" for p in SETTINGS.pairs
                                                   for s in ("bookTicker", "depth10@100ms", "trade")}
            for ex in ("binance", "okx"):
                server = sim.server(ex)
                for sym in QUOTES:
                    bid, ask, px = quote_for(ex, sym)
                    await server.push_bbo(sym, bid=bid, ask=ask, bid_qty=SIZES[sym], ask_qty="7")
                    await server.push_trade(sym, price=px, qty=SIZES[sym], side="sell" if ex == "okx" else "buy")

            for ex in ("binance", "okx"):
                for sym in QUOTES:
                    bid, ask, px = quote_for(ex, sym)
                    bbo = await sink.wait(is_md("bbo", ex, sym))
                    assert isinstance(bbo, BBO)
                    assert (bbo.exchange, bbo.symbol) == (ex, sym)
                    assert (bbo.bid_px, bbo.bid_sz, bbo.ask_px, bbo.ask_sz) == (
                        Decimal(bid), Decimal(SIZES[sym]), Decimal(ask), Decimal(7))
                    book = await sink.wait(is_md("book", ex, sym))
                    assert isinstance(book, Book)
                    assert book.bids[0] == (Decimal(bid), Decimal(SIZES[sym]))
                    assert book.asks[0] == (Decimal(ask), Decimal(7))
                    assert len(book.bids) == (10 if ex == "binance" else 5)
                    assert all(a[0] > b[0] for a, b in zip(book.bids, book.bids[1:], strict=False))
                    trade = await sink.wait(is_md("trade", ex, sym))
                    assert isinstance(trade, Trade)
                    assert (trade.price, trade.size) == (Decimal(px), Decimal(SIZES[sym]))
                    assert trade.side == ("sell" if ex == "okx" else "buy")
                    assert trade.ts_recv_us >= trade.ts_event_us - 1_000_000
                    # The snapshot keys hold the same latest values.
                    last = decode(await aredis.get(names.md_last_key("bbo", ex, sym)))
                    assert last == bbo
                    assert decode(await aredis.get(names.md_last_key("book", ex, sym))) == book
                    assert await aredis.get(names.md_last_key("trade", ex, sym)) is None  # trades only stream

            # Exact digits on the wire: Binance sends 8 decimals, OKX the shortest form; both kept as sent.
            raw = dict(sink.raw)
            assert orjson.loads(raw["md:bbo:binance:BTCUSDT"])["bid_px"] == "60000.10000000"
            assert orjson.loads(raw["md:bbo:okx:BTCUSDT"])["bid_px"] == "60000.09"
            assert orjson.loads(raw["md:trade:okx:DOGEUSDT"])["size"] == "2500"

            for ex in ("binance", "okx"):
                await wait_until(lambda ex=ex: _hash_has(aredis, ex, msgs_bbo="5", msgs_trade="5"),
                                 what=f"{ex} status hash counters")
                h = await feed_hash(aredis, ex)
                assert h["state"] == "up" and h["connection"] == "connected", h
                assert int(h["msgs_book"]) >= 5 and h["rejected"] == "0" and h["reconnects"] == "0", h
                assert int(h["last_msg_us"]) >= int(h["connected_since_us"]) > 0
                assert h["url"].startswith(sim.binance_url if ex == "binance" else sim.okx_url)
                st = await sink.status(ex, "up")
                assert st.reason == "receiving market data"
            assert procs.alive("binance") and procs.alive("okx")
        # SIGTERM: a last "down" goes out and stays in the hash.
        for ex in ("binance", "okx"):
            await sink.wait(lambda c, m, ex=ex: c == names.status_channel(ex) and isinstance(m, FeedStatus)
                            and (m.state, m.reason) == ("down", "ingestor stopped"))
            assert (await feed_hash(aredis, ex))["state"] == "down"


async def _hash_has(redis: aioredis.Redis, exchange: str, **fields: str) -> bool:
    h = await feed_hash(redis, exchange)
    return all(h.get(k) == v for k, v in fields.items())


# --- faults, keepalives, staleness, resubscription -------------------------------------------------------

SYM = "BTCUSDT"  # paused, so that every BTCUSDT message in Redis is one the test pushed


class Probe:
    """Pushes a BTCUSDT quote with a fresh price on one exchange and waits for it in Redis."""

    def __init__(self, sim: Simulator, sink: MdSink, exchange: str) -> None:
        self.sim, self.sink, self.ex = sim, sink, exchange
        self.server = sim.server(exchange)
        self.n = 0
        self.pushed: set[Decimal] = set()

    async def roundtrip(self, within: float = 10.0) -> BBO:
        self.n += 1
        bid = Decimal("60000.00") + self.n * Decimal("0.01")
        self.pushed.add(bid)
        mark = self.sink.mark()
        await self.server.push_bbo(SYM, bid=str(bid), ask=str(bid + Decimal("0.05")), book=False)
        m = await self.sink.wait(lambda c, m: c == names.md_channel("bbo", self.ex, SYM) and m.bid_px == bid,  # type: ignore[union-attr]
                                 within, mark)
        assert isinstance(m, BBO)
        return m

    def published_btc(self, kind: str, since: int = 0) -> list:
        return self.sink.find(is_md(kind, self.ex, SYM), since)

    async def reconnected(self, total: int, within: float = 10.0) -> None:
        """The ingestor dialled again (``total`` connections so far) and subscribed everything again."""
        srv = self.server
        await wait_until(lambda: srv.connections_total >= total and srv.connection_count == 1, within,
                         f"{self.ex}: connection #{total}")
        if self.ex == "okx":
            for inst in OKX_INSTS:
                for ch in ("bbo-tbt", "books5", "trades"):
                    await self.sim.okx.wait_subscribed((ch, inst), within)
        else:
            assert len(srv.subscriptions()) == 3 * len(SETTINGS.pairs)


GARBAGE = ("non_json", "truncated", "nan", "nan_literal", "negative", "empty")


@pytest.mark.parametrize("ex", ["binance", "okx"])
async def test_faults_keepalives_staleness_and_recovery(ex: str, tmp_path: Path, redis_url: str,
                                                        aredis: aioredis.Redis) -> None:
    """One ingestor process through every injected fault, in sequence; after each: down at once (or stale,
    for silence), a redial, a full resubscription, and data flowing again (``up``)."""
    async with (Simulator(settings=SETTINGS, seed=3, ping_interval=0.3, okx_idle_timeout=1.2) as sim,
                MdSink.open(redis_url) as sink):
        sim.pause(SYM)  # the other pairs keep walking: the connection is never idle unless a test wants it
        probe = Probe(sim, sink, ex)
        srv = sim.server(ex)
        conns = 1

        async def recovers(mark: int, reason_part: str) -> FeedStatus:
            """A ``down`` naming the cause, then a new connection, resubscribed, with data and ``up`` again."""
            nonlocal conns
            down = await sink.status(ex, "down", 5.0, mark)
            assert reason_part in down.reason, down
            conns += 1
            await probe.reconnected(conns)
            up_mark = sink.mark()
            await probe.roundtrip()
            await sink.status(ex, "up", 5.0, up_mark)
            return down

        async with ingestor_processes(redis_url, sim, tmp_path, exchanges=(ex,)) as procs:
            await probe.reconnected(1, within=15)
            await probe.roundtrip()
            await sink.status(ex, "up")

            # Keepalive: Binance's server pings are answered; OKX's "ping" after silence gets its "pong".
            if ex == "binance":
                await wait_until(lambda: sim.binance.pongs_received >= 3, what="pongs to the server's pings")
                assert sim.binance.rate_limit_closes == 0
            else:
                sim.pause(exchange="okx")  # nothing at all on the connection now
                mark = sink.mark()
                await wait_until(lambda: sim.okx.pings_received >= 3, what="ingestor pings during silence")
                # The ping keeps the connection alive past the server's 1.2 s idle limit ...
                assert sim.okx.idle_closes == 0 and srv.connections_total == 1
                # ... while the feed is reported stale at once: no market data.
                stale = await sink.status(ex, "stale", 5.0, mark)
                assert "no market data" in stale.reason
                sim.resume(exchange="okx")
                sim.pause(SYM)
                await sink.status(ex, "up", 5.0, sink.mark())

            # Staleness: data stops (connection stays) -> stale; data again -> up.
            sim.pause()
            mark = sink.mark()
            stale = await sink.status(ex, "stale", 5.0, mark)
            assert "no market data" in stale.reason, stale
            await probe.roundtrip()
            await sink.status(ex, "up", 5.0, mark)
            sim.resume()
            sim.pause(SYM)
            conns = srv.connections_total  # (Binance: the quiet spell may have tripped the idle watchdog)

            mark = sink.mark()
            await srv.drop_all(1000)
            await recovers(mark, "closed by server (code 1000")

            mark = sink.mark()
            await srv.abrupt_close_all()
            await recovers(mark, "connection closed")

            # Silent: the socket stays open but nothing comes (nor do pongs): stale, then the watchdog redials.
            mark = sink.mark()
            srv.go_silent(2.5)  # a bit longer than the ingestor's idle limit (1.5 s; OKX: 0.4 s ping + 1.5 s)
            stale = await sink.status(ex, "stale", 5.0, mark)
            down = await recovers(mark, "idle: no frame for")
            assert stale.ts_us < down.ts_us

            # Garbage: counted per reason, never published, the connection and the process survive.
            mark = sink.mark()
            before = await feed_hash(aredis, ex)
            for kind in GARBAGE:
                await srv.send_garbage(kind, SYM)
            await srv.send_crossed_book(SYM)
            await probe.roundtrip()
            assert all(m.bid_px in probe.pushed for m in probe.published_btc("bbo", mark)), "garbage published"  # type: ignore[union-attr]
            assert probe.published_btc("book", mark) == []  # only the crossed book was sent: dropped
            await wait_until(lambda: _hash_int(aredis, ex, "rejected", int(before["rejected"]) + 8),
                             what="rejections counted")
            h = await feed_hash(aredis, ex)
            assert h["reconnects"] == before["reconnects"] and h["state"] == "up", h
            assert int(h["rejected_crossed"]) == 2, h  # the bbo and the book
            assert int(h["rejected_bad_json"]) >= 3, h  # non-JSON, truncated, empty (NaN literal too)
            assert procs.alive(ex)

            # The exchange asks to reconnect: the redial happens at once, without a backoff.
            mark = sink.mark()
            if ex == "binance":
                await sim.binance.server_shutdown()
                down = await recovers(mark, "serverShutdown")
            else:
                await sim.okx.send_notice()
                down = await recovers(mark, "notice 64008")
            assert "redial in 0.00s" in down.reason, down

            # Every connection after the first is a counted redial. The hash is rewritten every second, and on a
            # loaded machine the idle watchdog may redial once more meanwhile: compare once it is connected.
            async def redials_counted() -> bool:
                h = await feed_hash(aredis, ex)
                return h.get("connection") == "connected" and int(h["reconnects"]) == srv.connections_total - 1

            await wait_until(redials_counted, 10, "every redial counted in the status hash")
            h = await feed_hash(aredis, ex)
            if ex == "okx":
                assert int(h["pings_sent"]) >= 3 and sim.okx.idle_closes == 0, h
        assert "Traceback" not in procs.log(ex), procs.log(ex)[-3000:]


async def _hash_int(redis: aioredis.Redis, exchange: str, field: str, at_least: int) -> bool:
    return int((await feed_hash(redis, exchange)).get(field, "0")) >= at_least


# --- through the gateway -------------------------------------------------------------------------------------


def _touch(m: dict) -> tuple:
    d = m["data"]
    return (d["bid_px"], d["bid_exchange"], d["ask_px"], d["ask_exchange"], tuple(d["live"]))


async def test_gateway_best_touch_and_trades_from_the_simulator(tmp_path: Path, redis_url: str) -> None:
    """simulator -> ingestor processes -> Redis -> gateway /ws, for exchange all, binance and okx; a silent
    exchange drops out of ``all`` as soon as its ingestor reports it stale, and comes back after the redial."""
    async with (Simulator(settings=SETTINGS, seed=5) as sim,
                ingestor_processes(redis_url, sim, tmp_path),
                run_gateway(redis_url, SR_FEEDS__STALE_AFTER_S=FAST_ENV["SR_FEEDS__STALE_AFTER_S"]) as base,
                ws_client(base, tok=token()) as c):
        sim.pause(SYM)  # the other pairs keep walking
        await wait_subscribed(sim)
        await sim.binance.push_bbo(SYM, bid="60000.10", ask="60000.30", bid_qty="1.5", ask_qty="2")
        await sim.okx.push_bbo(SYM, bid="60000.20", ask="60000.40", bid_qty="0.7", ask_qty="3")

        def touch_is(flt: str, want: tuple) -> Callable[[dict], bool]:
            return lambda m: m["type"] == "best_touch" and m["data"]["exchange"] == flt and _touch(m) == want

        both = ("binance", "okx")
        expect = {"all": (60000.2, "okx", 60000.3, "binance", both),
                  "binance": (60000.1, "binance", 60000.3, "binance", ("binance",)),
                  "okx": (60000.2, "okx", 60000.4, "okx", ("okx",))}
        for flt, want in expect.items():
            await c.subscribe(stream="best_touch", symbol=SYM, exchange=flt)
            await c.until(touch_is(flt, want), 15)  # the snapshot, or the update once the feeds are live
        for flt in expect:
            await c.subscribe(stream="trades", symbol=SYM, exchange=flt)

        await sim.binance.push_trade(SYM, price="60000.30", qty="0.25", side="buy")
        await sim.okx.push_trade(SYM, price="60000.20", qty="0.5", side="sell")
        got: dict[str, list[tuple]] = {"all": [], "binance": [], "okx": []}
        while len(got["all"]) < 2 or not got["binance"] or not got["okx"]:
            m = await c.until(lambda m: m["type"] == "trades", 10)
            d = m["data"]
            got[m["topic"].split(":")[2]].append((d["exchange"], d["price"], d["size"], d["side"]))
        assert sorted(got["all"]) == [("binance", 60000.3, 0.25, "buy"), ("okx", 60000.2, 0.5, "sell")]
        assert got["binance"] == [("binance", 60000.3, 0.25, "buy")]
        assert got["okx"] == [("okx", 60000.2, 0.5, "sell")]
        assert '"price":60000.30' in "".join(c.raw)  # Binance's digits, as a JSON number

        # OKX goes silent: its ingestor says stale within ~1 s and OKX leaves the "all" touch.
        sim.okx.go_silent(3.0)
        await c.until(touch_is("all", (60000.1, "binance", 60000.3, "binance", ("binance",))), 10)
        await c.until(touch_is("okx", (None, None, None, None, ())), 5)
        # The watchdog redials, the other pairs' data make OKX up again: its quote is back in "all".
        await c.until(touch_is("all", (60000.2, "okx", 60000.3, "binance", both)), 15)


async def test_on_a_cluster_every_pair_reaches_a_websocket_client(tmp_path: Path, redis_cluster: EmbeddedCluster,
                                                                cluster_url: str) -> None:
    """Cluster mode end to end: simulator -> ingestor processes (``REDIS_CLUSTER=1``, every node a seed in
    ``REDIS_URL``) -> sharded pub/sub over 3 masters -> gateway (cluster mode) -> /ws: each exchange's best touch,
    the best of both, and the trades of every configured pair, with their exact prices."""
    seeds = redis_cluster.urls
    quiet = {"SR_FEEDS__STALE_AFTER_S": "30", "SR_FEEDS__IDLE_TIMEOUT_S": "30"}  # the walk is paused: no data
    ks = names.Keyspace(cluster=True)
    assert len({redis_cluster.owner_of_slot(key_slot(ks.slot_key(ks.md_channel("bbo", "okx", s)).encode())).port
                for s in QUOTES}) >= 2
    async with (Simulator(settings=SETTINGS, seed=5) as sim,
                ingestor_processes(seeds, sim, tmp_path, cluster=True, **quiet) as procs,
                run_gateway(seeds, REDIS_CLUSTER="1", **quiet) as base,
                ws_client(base, tok=token()) as c):
        sim.pause()
        await wait_subscribed(sim)
        want: dict[tuple[str, str], tuple] = {}
        for sym in QUOTES:
            q = {ex: quote_for(ex, sym) for ex in ("binance", "okx")}
            for flt in ("binance", "okx"):
                bid, ask, _ = q[flt]
                want[(sym, flt)] = (float(bid), flt, float(ask), flt, (flt,))
            # OKX quotes one tick outside Binance: Binance holds both sides of the best touch.
            want[(sym, "all")] = (float(q["binance"][0]), "binance", float(q["binance"][1]), "binance",
                                  ("binance", "okx"))
            for flt in ("all", "binance", "okx"):
                await c.subscribe(stream="best_touch", symbol=sym, exchange=flt)
            await c.subscribe(stream="trades", symbol=sym, exchange="all")
        for ex in ("binance", "okx"):
            for sym in QUOTES:
                bid, ask, px = quote_for(ex, sym)
                await sim.server(ex).push_bbo(sym, bid=bid, ask=ask, bid_qty=SIZES[sym], ask_qty="7")
                await sim.server(ex).push_trade(sym, price=px, qty=SIZES[sym], side="sell" if ex == "okx" else "buy")

        touches: dict[tuple[str, str], tuple] = {}
        trades: dict[str, set[tuple]] = {sym: set() for sym in QUOTES}
        expected_trades = {sym: {(ex, float(quote_for(ex, sym)[2]), float(SIZES[sym]), "sell" if ex == "okx" else "buy")
                                 for ex in ("binance", "okx")} for sym in QUOTES}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while any(touches.get(k) != v for k, v in want.items()) or trades != expected_trades:
            assert loop.time() < deadline, (
                f"touches missing: {[k for k, v in want.items() if touches.get(k) != v]}; trades: {trades}")
            m = await c.until(lambda m: m["type"] in ("best_touch", "trades"), max(0.1, deadline - loop.time()))
            d = m["data"]
            if m["type"] == "best_touch":
                touches[(d["symbol"], d["exchange"])] = _touch(m)
            else:
                trades[d["symbol"]].add((d["exchange"], d["price"], d["size"], d["side"]))
        assert procs.alive("binance") and procs.alive("okx")
    for ex in ("binance", "okx"):
        assert "Traceback" not in procs.log(ex), procs.log(ex)[-3000:]


# --- the matcher reads the status hash the ingestor writes -------------------------------------------------


@pytest.fixture(params=["one-server", "cluster"])
def any_redis(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """(URL, cluster): the session's redis-server, then the session's Redis Cluster."""
    cluster = request.param == "cluster"
    return request.getfixturevalue("cluster_url" if cluster else "redis_url"), cluster


async def test_matcher_snapshot_trusts_the_ingestors_status_hash(any_redis: tuple[str, bool]) -> None:
    from ingestor.service import Ingestor
    from matcher.engine import Matcher
    from shared.timeutil import now_us

    redis_url, cluster = any_redis
    async with connect_any(redis_url, cluster) as aredis, Simulator(settings=SETTINGS, seed=9) as sim:
        # The hash is rewritten every second (heartbeat): a staleness limit of 3 s trusts it, as 5 s does live.
        env = {**FAST_ENV, "REDIS_URL": redis_url, "BINANCE_WS_URL": sim.binance_url, "OKX_WS_URL": sim.okx_url,
               "SR_FEEDS__STALE_AFTER_S": "3", **({"REDIS_CLUSTER": "1"} if cluster else {})}
        settings = load_settings(env=env)
        ks = settings.redis.keyspace
        ings = [Ingestor(settings, ex, aredis) for ex in ("binance", "okx")]
        tasks = [asyncio.create_task(i.run()) for i in ings]
        try:
            for ex in ("binance", "okx"):
                await wait_until(lambda ex=ex: _hash_has(aredis, ex, state="up"), 15, f"{ex} up in the hash")
                await wait_until(lambda ex=ex: aredis.exists(ks.md_last_key("bbo", ex, "BTCUSDT")), 15,
                                 f"{ex} BTCUSDT bbo snapshot")
            m = Matcher(settings, aredis)
            await m.load_snapshots()
            # Without waiting for a heartbeat, a matcher that starts now knows both feeds are live ...
            assert m.health.live(now_us()) == ("binance", "okx")
            assert {ex for ex, _ in m.bbos} == {"binance", "okx"}
            assert m.touch("BTCUSDT").live == ("binance", "okx")
        finally:
            for i in ings:
                i.stop()
            await asyncio.gather(*tasks)
        # ... and once the ingestors stopped ("down" in the hash) it does not trust them.
        m = Matcher(settings, aredis)
        await m.load_snapshots()
        assert m.health.live(now_us()) == ()


# --- replay of a real capture --------------------------------------------------------------------------------


def _capture_trades(path: Path) -> list[tuple[str, Decimal, Decimal, str, int]]:
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            _, _, frame = line.partition(" ")
            if '"btcusdt@trade"' not in frame:
                continue
            d = orjson.loads(frame)["data"]
            out.append((str(d["t"]), Decimal(d["p"]), Decimal(d["q"]), "sell" if d["m"] else "buy", d["T"] * 1000))
    return out


@pytest.mark.captures
async def test_replay_of_a_capture_reaches_redis(tmp_path: Path, redis_url: str, captures_dir: Path) -> None:
    """``python -m simulator --replay <hftbacktest gz> --speed 0`` -> ``python -m ingestor binance`` -> Redis:
    every trade of the capture, in order, with its exact id, price, size, taker side and exchange time."""
    capture = captures_dir / "hftbacktest" / "btcusdt_20240808.gz"
    if not capture.exists():
        pytest.skip(f"{capture} not found")
    expected = await asyncio.to_thread(_capture_trades, capture)
    assert len(expected) > 1000
    env = process_env(redis_url)
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator", "--replay", str(capture), "--speed", "0", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, stdin=asyncio.subprocess.DEVNULL)
    try:
        assert sim.stdout is not None
        urls = {}
        while len(urls) < 2:
            line = (await asyncio.wait_for(sim.stdout.readline(), 30)).decode()
            assert line, "simulator exited before printing its URLs"
            key, _, url = line.strip().partition("=")
            urls[key] = url
        async with (MdSink.open(redis_url, names.md_pattern("trade", "binance", "BTCUSDT")) as sink,
                    ingestor_processes(redis_url, None, tmp_path, exchanges=("binance",),
                                       BINANCE_WS_URL=urls["BINANCE_WS_URL"],
                                       SR_FEEDS__IDLE_TIMEOUT_S="30", SR_FEEDS__STALE_AFTER_S="30")):
            await wait_until(lambda: len(sink.items) >= len(expected), 60, f"{len(expected)} replayed trades")
    finally:
        if sim.returncode is None:
            sim.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(sim.wait(), 10)
        except TimeoutError:
            sim.kill()
            await sim.wait()
    got = [(m.trade_id, m.price, m.size, m.side, m.ts_event_us) for _, m in sink.items]  # type: ignore[union-attr]
    assert got == expected
    assert sim.returncode == 0
