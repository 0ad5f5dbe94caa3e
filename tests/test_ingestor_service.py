"""A whole ingestor (supervisor + parser + publisher + feed status) against scripted exchange servers on
127.0.0.1 and the real redis-server fixture."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection

from ingestor.service import Ingestor, exchange_parts
from ingestor.stats import feed_state
from shared import names
from shared.schema import BBO, FeedStatus, Trade, decode
from shared.settings import Settings
from shared.timeutil import now_us
from tests.ingestor_helpers import doc_settings, scripted_server, wait_for

FAST = {"SR_FEEDS__STALE_AFTER_S": "0.3", "SR_FEEDS__IDLE_TIMEOUT_S": "5", "SR_FEEDS__BACKOFF_INITIAL_S": "0.05",
        "SR_FEEDS__BACKOFF_MAX_S": "0.2", "SR_FEEDS__STABLE_AFTER_S": "5"}


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return doc_settings(tmp_path, **{**FAST, **env})


@contextlib.asynccontextmanager
async def running(ing: Ingestor) -> AsyncIterator[Ingestor]:
    task = asyncio.create_task(ing.run())
    try:
        yield ing
    finally:
        ing.stop()
        await asyncio.wait_for(task, 5)


def bn(stream: str, data: dict) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


TICKER = {"u": 400900217, "s": "BTCUSDT", "b": "64000.10", "B": "1.5", "a": "64000.20", "A": "0.25"}
DEPTH = {"lastUpdateId": 160, "bids": [["64000.1", "1.5"], ["64000", "2"]], "asks": [["64000.2", "0.25"]]}
TRADE = {"e": "trade", "E": 1672515782136, "s": "BTCUSDT", "t": 12345, "p": "64000.1", "q": "0.5",
         "T": 1672515782136, "m": True, "M": True}


async def status_messages(ps: aioredis.client.PubSub, within_s: float) -> list[FeedStatus]:
    out: list[FeedStatus] = []
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if m is not None:
            st = decode(m["data"])
            assert isinstance(st, FeedStatus)
            out.append(st)
    return out


async def test_binance_end_to_end(tmp_path: Path, aredis: aioredis.Redis) -> None:
    async def exchange(ws: ServerConnection) -> None:
        if srv.connections == 1:
            for frame in (bn("btcusdt@bookTicker", TICKER), bn("btcusdt@depth10@100ms", DEPTH),
                          bn("btcusdt@trade", TRADE), b'{"stream":"btcusdt@bookTicker","data":{"b":"NaN"}}',
                          bn("btcusdt@bookTicker", {**TICKER, "b": "64000.30"}), b"garbage"):
                await ws.send(frame.decode())
            await ws.send('{"e":"serverShutdown","E":1746093260000}')
        else:
            await ws.send(bn("btcusdt@bookTicker", {**TICKER, "u": 400900218}).decode())
        await ws.wait_closed()

    ps = aredis.pubsub()
    await ps.psubscribe("md:*")
    async with scripted_server(exchange) as srv:
        ing = Ingestor(settings_for(tmp_path, BINANCE_WS_URL=srv.url), "binance", aredis)
        async with running(ing):
            await wait_for(lambda: ing.stats.messages["bbo"] == 2, what="bbo after the redial")
            ing.publish_status(now_us())  # as the next heartbeat would
            await ing.publisher.flush()
            fields = await aredis.hgetall(names.status_key("binance"))
            seen: dict[str, list[bytes]] = {}
            deadline = asyncio.get_running_loop().time() + 0.5
            while asyncio.get_running_loop().time() < deadline:
                m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.05)
                if m is not None:
                    seen.setdefault(m["channel"].decode(), []).append(m["data"])
    await ps.aclose()
    assert srv.connections == 2
    assert srv.paths[0].startswith("/stream?streams=btcusdt@bookTicker/btcusdt@depth10@100ms/btcusdt@trade/")
    [b1, b2] = [decode(p) for p in seen["md:bbo:binance:BTCUSDT"]]
    assert isinstance(b1, BBO) and str(b1.bid_px) == "64000.10" and b2.seq == 400900218  # type: ignore[union-attr]
    [t] = [decode(p) for p in seen["md:trade:binance:BTCUSDT"]]
    assert isinstance(t, Trade) and t.side == "sell" and t.trade_id == "12345"
    assert len(seen["md:book:binance:BTCUSDT"]) == 1
    assert "md:status:binance" in seen
    last = decode(await aredis.get(names.md_last_key("bbo", "binance", "BTCUSDT")))
    assert last.seq == 400900218  # type: ignore[union-attr]
    assert await aredis.get(names.md_last_key("book", "binance", "BTCUSDT"))
    # status hash readable with redis-cli HGETALL md:feed:binance
    assert fields[b"state"] == b"up" and fields[b"connection"] == b"connected"
    assert (fields[b"msgs_bbo"], fields[b"msgs_book"], fields[b"msgs_trade"]) == (b"2", b"1", b"1")
    assert fields[b"rejected"] == b"3"  # NaN, crossed, garbage
    assert (fields[b"rejected_crossed"], fields[b"rejected_bad_json"]) == (b"1", b"1")
    assert fields[b"reconnects"] == b"1"
    assert int(fields[b"last_msg_us"]) >= int(fields[b"connected_since_us"]) > 0


async def test_okx_end_to_end_subscribes_pings_and_redials_on_notice(tmp_path: Path, aredis: aioredis.Redis) -> None:
    subs: list[list[dict]] = []
    pings = 0

    async def exchange(ws: ServerConnection) -> None:
        nonlocal pings
        got: list[dict] = []
        subs.append(got)
        async for msg in ws:
            if msg == "ping":
                pings += 1
                await ws.send("pong")
                continue
            req = orjson.loads(msg)
            got.append(req)
            for arg in req["args"]:
                await ws.send(orjson.dumps({"id": req["id"], "event": "subscribe", "arg": arg,
                                            "connId": "a4d3ae55"}).decode())
            if len(got) == 3:
                await ws.send('{"event":"channel-conn-count","channel":"books5","connCount":"2","connId":"a"}')
                await ws.send('{"event":"error","code":"60012","msg":"Invalid request","connId":"a"}')
                await ws.send(orjson.dumps({"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [
                    {"instId": "BTC-USDT", "tradeId": str(srv.connections), "px": "42219.9", "sz": "0.1",
                     "side": "buy", "ts": "1630048897897"}]}).decode())
                if srv.connections == 1:
                    await ws.send('{"event":"notice","code":"64008","msg":"The connection will soon be closed '
                                  'for a service upgrade."}')

    async with scripted_server(exchange) as srv:
        settings = settings_for(tmp_path, OKX_WS_URL=srv.url, SR_OKX__PING_AFTER_S="0.15",
                                SR_FEEDS__BACKOFF_INITIAL_S="3")
        ing = Ingestor(settings, "okx", aredis, endpoint=replace(exchange_parts("okx", settings)[1], subscribe_pace_s=0.01))
        async with running(ing):
            await wait_for(lambda: ing.stats.messages["trade"] == 2, within_s=2.0,
                           what="trade on the second connection (redialled without backoff)")
            await wait_for(lambda: pings >= 2, what="keepalive pings")
            ing.publish_status(now_us())  # as the next heartbeat would
            await ing.publisher.flush()
            fields = await aredis.hgetall(names.status_key("okx"))
    assert srv.connections == 2
    assert [[r["args"][0]["channel"] for r in conn] for conn in subs] == [["bbo-tbt", "books5", "trades"]] * 2
    assert len(subs[0][0]["args"]) == 3  # every configured pair
    assert fields[b"exchange_errors"] == b"2"  # the error event on each connection, not channel-conn-count
    assert fields[b"reconnects"] == b"1" and fields[b"rejected"] == b"0"
    assert int(fields[b"pings_sent"]) == pings


async def test_staleness_heartbeats_and_down(tmp_path: Path, aredis: aioredis.Redis) -> None:
    close_now = asyncio.Event()

    async def exchange(ws: ServerConnection) -> None:
        if srv.connections > 1:
            await ws.wait_closed()
            return
        await ws.send(bn("btcusdt@bookTicker", TICKER).decode())
        await close_now.wait()  # connected, but no more market data
        await ws.close()

    ps = aredis.pubsub()
    await ps.subscribe(names.status_channel("binance"))
    async with scripted_server(exchange) as srv:
        settings = settings_for(tmp_path, BINANCE_WS_URL=srv.url, SR_FEEDS__BACKOFF_INITIAL_S="5",
                                SR_FEEDS__BACKOFF_MAX_S="5")
        ing = Ingestor(settings, "binance", aredis)
        async with running(ing):
            first = await status_messages(ps, 1.6)
            close_now.set()
            second = await status_messages(ps, 0.4)
        final = await status_messages(ps, 0.3)
    await ps.aclose()
    states = [s.state for s in first]
    changes = [st for i, st in enumerate(states) if i == 0 or states[i - 1] != st]
    # starting/connecting (down) -> stale (connected, no data yet) -> up on the first quote -> stale 0.3 s later
    assert changes[-2:] == ["up", "stale"], states
    assert states.count("stale") >= 2, states  # the change, then heartbeats keep saying stale
    assert any("no market data" in s.reason for s in first if s.state == "stale")
    assert [s.state for s in second][0] == "down" and "closed" in second[0].reason
    assert final[-1].state == "down" and final[-1].reason == "ingestor stopped"
    assert (await aredis.hget(names.status_key("binance"), "state")) == b"down"


def test_feed_state_rule() -> None:
    s = 1_000_000
    assert feed_state(False, 5 * s, 1 * s, 5 * s, s)[0] == "down"
    assert feed_state(True, 0, 10 * s, 10 * s + 1, s) == ("stale", "connected, waiting for market data")
    assert feed_state(True, 0, 10 * s, 12 * s, s)[0] == "stale"
    assert feed_state(True, 9 * s, 10 * s, 10 * s + 1, s)[0] == "stale"  # data from before this connection
    assert feed_state(True, 11 * s, 10 * s, 11 * s + s // 2, s)[0] == "up"
    assert feed_state(True, 11 * s, 10 * s, 12 * s, s)[0] == "stale"


async def test_process_runs_and_stops_cleanly_on_sigterm(tmp_path: Path, redis_url: str,
                                                         aredis: aioredis.Redis) -> None:
    import os
    import signal
    import sys

    from shared.settings import ROOT

    async def exchange(ws: ServerConnection) -> None:
        async for msg in ws:
            if msg != "ping" and orjson.loads(msg)["args"][0]["channel"] == "trades":
                await ws.send(orjson.dumps({"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [
                    {"instId": "BTC-USDT", "tradeId": "1", "px": "42219.9", "sz": "0.1", "side": "buy",
                     "ts": "1630048897897"}]}).decode())

    async with scripted_server(exchange) as srv:
        env = {**os.environ, "REDIS_URL": redis_url, "OKX_WS_URL": srv.url, "SR_CONFIG": str(ROOT / "config" /
                                                                                         "config.toml")}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingestor", "okx", env=env, cwd=ROOT,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            async def trade_seen() -> bool:
                return await aredis.hget(names.status_key("okx"), "msgs_trade") == b"1"
            for _ in range(100):
                if await trade_seen():
                    break
                await asyncio.sleep(0.05)
            assert await trade_seen()
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert await aredis.hget(names.status_key("okx"), "state") == b"down"


# --- several connections ---------------------------------------------------------------------------------


def _ticker(sym: str) -> dict:
    return {**TICKER, "s": sym}


async def test_pairs_spread_over_connections_status_is_the_worst_connection(tmp_path: Path,
                                                                             aredis: aioredis.Redis) -> None:
    """6 pairs at 9 streams per connection: 2 Binance connections feeding one publisher; the shard's status hash
    has its own key and per-connection fields; one connection down makes the feed down."""
    from ingestor.planning import Shard, feed_status_key, select_pairs, status_suffix
    from tests.ingestor_helpers import many_pairs_settings

    drop = asyncio.Event()

    async def exchange(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        streams = path.split("streams=", 1)[1].split("/")
        n = srv.connections
        for name in streams:
            if name.endswith("@bookTicker"):
                await ws.send(bn(name, _ticker(name.split("@")[0].upper())).decode())
        if n == 2:
            await drop.wait()
            await ws.close()
            return
        while True:  # keep the first connection fresh
            await asyncio.sleep(0.05)
            await ws.send(bn(streams[0], _ticker(streams[0].split("@")[0].upper())).decode())

    async with scripted_server(exchange) as srv:
        settings = many_pairs_settings(tmp_path, 12, **{
            **FAST, "BINANCE_WS_URL": srv.url, "SR_BINANCE__MAX_STREAMS_PER_CONNECTION": "9",
            "SR_FEEDS__STALE_AFTER_S": "5", "SR_FEEDS__BACKOFF_INITIAL_S": "30", "SR_FEEDS__BACKOFF_MAX_S": "30"})
        shard = Shard(1, 2)
        pairs = select_pairs(settings.pairs, shard)
        assert [p.symbol for p in pairs] == [f"P{i:03d}USDT" for i in range(0, 12, 2)]
        ing = Ingestor(settings, "binance", aredis, pairs=pairs, status_suffix=status_suffix(shard))
        assert len(ing.links) == 2
        key = feed_status_key("binance", "1/2")
        async with running(ing):
            await wait_for(lambda: ing.stats.messages["bbo"] >= 6 and ing.state == "up", what="6 bbo, feed up")
            ing.publish_status(now_us())
            await ing.publisher.flush()
            up = await aredis.hgetall(key)
            drop.set()
            await wait_for(lambda: ing.state == "down", what="down with one connection of two closed")
            reason = ing.reason
            ing.publish_status(now_us())
            await ing.publisher.flush()
            down = await aredis.hgetall(key)
        for p in pairs:
            assert await aredis.exists(names.md_last_key("bbo", "binance", p.symbol))
        assert not await aredis.exists(names.status_key("binance"))  # a shard never writes the exchange's hash
    assert srv.connections == 2
    assert sorted(srv.paths)[0].startswith("/stream?streams=p000usdt@bookTicker/p000usdt@depth10@100ms/")
    assert (up[b"state"], up[b"connections"], up[b"connections_up"], up[b"shard"]) == (b"up", b"2", b"2", b"1/2")
    assert (up[b"conn1_pairs"], up[b"conn2_pairs"], up[b"conn2_subscriptions"], up[b"pairs"]) == (b"3", b"3", b"9", b"6")
    assert reason.startswith("connection 2/2: disconnected"), reason
    assert (down[b"state"], down[b"connection"], down[b"connections_up"]) == (b"down", b"disconnected", b"1")
    assert down[b"conn1_state"] == b"up" and down[b"conn2_state"] == b"down"


async def test_okx_connections_are_dialled_apart(tmp_path: Path, aredis: aioredis.Redis) -> None:
    """OKX allows 3 connection requests/s per IP: 4 planned connections are opened CONNECT_INTERVAL_S apart."""
    from ingestor import okx
    from tests.ingestor_helpers import many_pairs_settings

    opened: list[float] = []
    subs: list[list[dict]] = []

    async def exchange(ws: ServerConnection) -> None:
        opened.append(asyncio.get_running_loop().time())
        got: list[dict] = []
        subs.append(got)
        async for msg in ws:
            if msg == "ping":
                await ws.send("pong")
                continue
            req = orjson.loads(msg)
            got.append(req)
            for arg in req["args"]:
                await ws.send(orjson.dumps({"id": req["id"], "event": "subscribe", "arg": arg}).decode())

    async with scripted_server(exchange) as srv:
        settings = many_pairs_settings(tmp_path, 8, **FAST, OKX_WS_URL=srv.url, SR_OKX__MAX_ARGS_PER_CONNECTION="6")
        ing = Ingestor(settings, "okx", aredis)
        assert len(ing.links) == 4
        async with running(ing):
            await wait_for(lambda: sum(len(s) for s in subs) == 12, what="3 requests on each of 4 connections")
            assert ing.subscribed == 24
    gaps = [b - a for a, b in zip(opened, opened[1:], strict=False)]
    assert len(opened) == 4 and min(gaps) >= okx.CONNECT_INTERVAL_S * 0.9, gaps
    insts = sorted(a["instId"] for conn in subs for req in conn for a in req["args"] if a["channel"] == "trades")
    assert insts == sorted(p.okx for p in settings.pairs)
