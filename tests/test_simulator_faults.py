"""Fault injection seen from a real client: clean drop, TCP reset, silence, garbage, notices, crossed books."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.simtools import collect, recv_until, running


async def okx_subscribed(sim, ws, channel: str = "bbo-tbt", inst: str = "BTC-USDT") -> None:  # type: ignore[no-untyped-def]
    await ws.send(orjson.dumps({"op": "subscribe", "args": [{"channel": channel, "instId": inst}]}).decode())
    await recv_until(ws, lambda m: m.get("event") == "subscribe")


async def test_drop_all_closes_cleanly_and_clients_can_reconnect() -> None:
    async with running() as sim:
        url = f"{sim.binance_url}/stream?streams=btcusdt@trade"
        async with connect(url) as ws:
            await sim.binance.wait_connections(1)
            await sim.binance.drop_all()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 2)
                await asyncio.wait_for(ws.recv(), 2)
        assert ws.close_code == 1000
        async with connect(url):
            await sim.binance.wait_connections(1)
            assert sim.binance.connection_attempts == 2 and sim.binance.connections_total == 2


async def test_abrupt_close_is_1006_on_the_client() -> None:
    async with running() as sim:
        async with connect(sim.okx_url) as ws:
            await okx_subscribed(sim, ws)
            await sim.okx.abrupt_close_all()
            with pytest.raises(ConnectionClosed) as e:
                for _ in range(100):
                    await asyncio.wait_for(ws.recv(), 2)
        assert e.value.rcvd is None  # no close frame
        assert ws.close_code == 1006
        await sim.okx.wait_for(lambda: sim.okx.connection_count == 0)


async def test_go_silent_sends_nothing_and_ignores_pings() -> None:
    async with running() as sim:
        async with connect(f"{sim.binance_url}/ws/btcusdt@bookTicker", ping_interval=None) as ws:
            await recv_until(ws, lambda m: "u" in m)
            sim.binance.go_silent(0.8)
            started = time.monotonic()
            await asyncio.sleep(0.05)
            while True:  # frames queued before the silence may still arrive first
                try:
                    await asyncio.wait_for(ws.recv(), 0.1)
                except TimeoutError:
                    break
            pong = await ws.ping()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pong), 0.4)
            await recv_until(ws, lambda m: "u" in m, within=3)
            assert time.monotonic() - started >= 0.75
            await asyncio.wait_for(pong, 1)  # answered once the silence ends


@pytest.mark.parametrize("kind", ["non_json", "truncated", "nan", "nan_literal", "negative"])
async def test_garbage_frames(kind: str) -> None:
    async with running() as sim:
        sim.pause()
        async with connect(f"{sim.binance_url}/stream?streams=btcusdt@bookTicker") as b, connect(sim.okx_url) as o:
            await okx_subscribed(sim, o)
            await sim.binance.wait_subscribed("btcusdt@bookTicker")
            await sim.binance.send_garbage(kind, "BTCUSDT")
            await sim.okx.send_garbage(kind, "BTCUSDT")
            got_b = await asyncio.wait_for(b.recv(), 2)
            got_o = await asyncio.wait_for(o.recv(), 2)
    for raw in (got_b, got_o):
        if kind in ("non_json", "truncated", "nan_literal"):
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(raw)
        else:
            assert orjson.loads(raw)
    if kind == "nan":
        assert orjson.loads(got_b)["data"]["b"] == "NaN"
        assert orjson.loads(got_o)["data"][0]["bids"][0][0] == "NaN"
    if kind == "negative":
        assert Decimal(orjson.loads(got_b)["data"]["B"]) < 0
        assert Decimal(orjson.loads(got_o)["data"][0]["bids"][0][1]) < 0


async def test_okx_notice_and_binance_server_shutdown() -> None:
    async with running() as sim:
        async with connect(f"{sim.binance_url}/ws") as b, connect(sim.okx_url) as o:
            await sim.binance.wait_connections(1)
            await sim.okx.wait_connections(1)
            await sim.binance.server_shutdown()
            await sim.okx.send_notice()
            ev = await recv_until(b, lambda m: m.get("e") == "serverShutdown")
            assert isinstance(ev["E"], int)
            notice = await recv_until(o, lambda m: m.get("event") == "notice")
            assert notice["code"] == "64008" and notice["msg"] and notice["connId"]


async def test_crossed_books() -> None:
    async with running() as sim:
        sim.pause("BTCUSDT")
        async with connect(f"{sim.binance_url}/stream?streams=btcusdt@bookTicker/btcusdt@depth10@100ms") as b, \
                connect(sim.okx_url) as o:
            await okx_subscribed(sim, o, "books5")
            await sim.binance.wait_subscribed("btcusdt@depth10@100ms")
            await sim.binance.send_crossed_book("BTCUSDT")
            await sim.okx.send_crossed_book("BTCUSDT")
            frames = await collect(b, 0.3)
            book = await recv_until(o, lambda m: "data" in m)
    bt = next(f["data"] for f in frames if f["stream"] == "btcusdt@bookTicker")
    depth = next(f["data"] for f in frames if f["stream"] == "btcusdt@depth10@100ms")
    assert Decimal(bt["b"]) > Decimal(bt["a"])
    assert Decimal(depth["bids"][0][0]) > Decimal(depth["asks"][0][0])
    d = book["data"][0]
    assert Decimal(d["bids"][0][0]) > Decimal(d["asks"][0][0])


async def test_inspection_counters() -> None:
    async with running() as sim:
        async with connect(f"{sim.binance_url}/stream?streams=btcusdt@trade/ethusdt@trade"), \
                connect(sim.okx_url) as o:
            await okx_subscribed(sim, o, "trades", "SOL-USDT")
            await sim.binance.wait_connections(1)
            assert sim.binance.connection_count == 1 and sim.okx.connection_count == 1
            assert sim.binance.subscriptions() == {"btcusdt@trade", "ethusdt@trade"}
            assert sim.binance.subscriptions_by_connection() == [["btcusdt@trade", "ethusdt@trade"]]
            assert sim.okx.subscriptions() == {("trades", "SOL-USDT")}
            await o.send("ping")
            assert await asyncio.wait_for(o.recv(), 2) == "pong"
            assert sim.okx.pings_received == 1
        await sim.binance.wait_for(lambda: sim.binance.connection_count == 0)
        assert sim.binance.subscriptions() == set()
