"""The simulated Binance over a real websockets client: combined/raw streams, methods, limits, pings."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.simtools import collect, recv_until, running

DEC8 = re.compile(r"^\d+\.\d{8}$")


async def test_combined_streams_shapes_and_symbol_routing() -> None:
    async with running(rate=3) as sim:  # rate x3: trades are Poisson, make sure some arrive
        url = (f"{sim.binance_url}/stream?streams=btcusdt@bookTicker/btcusdt@depth10@100ms/"
               "btcusdt@trade/ethusdt@bookTicker")
        async with connect(url) as ws:
            frames = await collect(ws, 1.2)
    names = {f["stream"] for f in frames}
    assert names == {"btcusdt@bookTicker", "btcusdt@depth10@100ms", "btcusdt@trade", "ethusdt@bookTicker"}
    for f in frames:
        assert set(f) == {"stream", "data"}
        d = f["data"]
        if f["stream"].endswith("@bookTicker"):
            assert set(d) == {"u", "s", "b", "B", "a", "A"}
            assert d["s"] == f["stream"].split("@")[0].upper()
            assert all(DEC8.match(d[k]) for k in "bBaA") and isinstance(d["u"], int)
            assert Decimal(d["b"]) < Decimal(d["a"])
        elif f["stream"] == "btcusdt@depth10@100ms":
            assert set(d) == {"lastUpdateId", "bids", "asks"}
            assert len(d["bids"]) == 10 and len(d["asks"]) == 10
            assert all(DEC8.match(p) and DEC8.match(q) for p, q in d["bids"] + d["asks"])
        else:
            assert set(d) == {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
            assert d["e"] == "trade" and d["s"] == "BTCUSDT" and isinstance(d["m"], bool)
    depth = [f for f in frames if "depth" in f["stream"]]
    assert 20 <= len(depth) <= 40  # every 100 ms / 3
    ids = [f["data"]["lastUpdateId"] for f in depth]
    assert ids == sorted(ids)


async def test_raw_endpoint_and_methods() -> None:
    async with running() as sim:
        async with connect(f"{sim.binance_url}/ws/ethusdt@trade") as ws:
            d = await recv_until(ws, lambda m: "e" in m)
            assert d["e"] == "trade" and d["s"] == "ETHUSDT"  # not wrapped
            await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": ["solusdt@bookTicker"], "id": 1}).decode())
            assert await recv_until(ws, lambda m: "id" in m) == {"result": None, "id": 1}
            await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":2}')
            assert await recv_until(ws, lambda m: "id" in m) == {"result": ["ethusdt@trade", "solusdt@bookTicker"],
                                                                 "id": 2}
            assert await recv_until(ws, lambda m: m.get("s") == "SOLUSDT" and "b" in m)
            await asyncio.sleep(1.1)  # stay under 5 messages/s
            await ws.send('{"method":"UNSUBSCRIBE","params":["ethusdt@trade","solusdt@bookTicker"],"id":3}')
            assert await recv_until(ws, lambda m: "id" in m) == {"result": None, "id": 3}
            await ws.send('{"method":"SUBSCRIBE","params":["xyzusdt@trade"],"id":4}')
            assert await recv_until(ws, lambda m: "id" in m) == {
                "error": {"code": 2, "msg": "Invalid request: invalid stream name `xyzusdt@trade`"}, "id": 4}
            await ws.send("not json")
            err = await recv_until(ws, lambda m: "error" in m)
            assert err["error"]["code"] == 3 and err["id"] is None
            await asyncio.sleep(1.1)
            await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":5}')
            assert await recv_until(ws, lambda m: "id" in m) == {"result": [], "id": 5}
            assert sim.binance.subscriptions() == set()


async def test_set_property_combined_wraps_frames() -> None:
    async with running() as sim:
        async with connect(f"{sim.binance_url}/ws/btcusdt@bookTicker") as ws:
            await ws.send('{"method":"SET_PROPERTY","params":["combined",true],"id":1}')
            await recv_until(ws, lambda m: m.get("id") == 1)
            f = await recv_until(ws, lambda m: "stream" in m)
            assert f["stream"] == "btcusdt@bookTicker" and f["data"]["s"] == "BTCUSDT"


async def test_handshake_refusals_and_attempt_counter() -> None:
    async with running() as sim:
        with pytest.raises(InvalidStatus) as e:
            async with connect(f"{sim.binance_url}/stream?streams=btcusdt@nonsense"):
                pass
        assert e.value.response.status_code == 400
        with pytest.raises(InvalidStatus) as e:
            async with connect(f"{sim.binance_url}/stream?streams=BTCUSDT@trade"):
                pass
        assert e.value.response.status_code == 400
        with pytest.raises(InvalidStatus) as e:
            async with connect(f"{sim.binance_url}/api/v3/depth"):
                pass
        assert e.value.response.status_code == 404
        assert sim.binance.connection_attempts == 3
        assert sim.binance.connection_count == 0


async def test_more_than_five_messages_a_second_closes() -> None:
    async with running() as sim:
        async with connect(f"{sim.binance_url}/ws") as ws:
            for i in range(7):
                await ws.send(f'{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}')
            with pytest.raises(ConnectionClosed):
                for _ in range(20):
                    await asyncio.wait_for(ws.recv(), 3)
        assert ws.close_code == 1008
        assert sim.binance.rate_limit_closes == 1


async def test_server_pings_and_counts_pongs() -> None:
    async with running(ping_interval=0.2) as sim:
        async with connect(f"{sim.binance_url}/ws", ping_interval=None) as ws:
            await asyncio.sleep(0.75)
            assert ws.state.name == "OPEN"
        assert sim.binance.pings_sent >= 2
        assert sim.binance.pongs_received >= 2


async def test_unanswered_pings_close_the_connection() -> None:
    async with running(ping_interval=0.2, pong_timeout=0.3) as sim:
        async with connect(f"{sim.binance_url}/ws", ping_interval=None) as ws:
            ws.transport.pause_reading()  # the client stops reading: no pongs
            await asyncio.sleep(0.8)
            ws.transport.resume_reading()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 3)
        assert ws.close_code == 1008


async def test_push_exact_prices_while_paused() -> None:
    async with running() as sim:
        sim.pause("BTCUSDT", exchange="binance")
        url = f"{sim.binance_url}/stream?streams=btcusdt@bookTicker/btcusdt@depth5@100ms/btcusdt@trade"
        async with connect(url) as ws:
            await sim.binance.wait_subscribed("btcusdt@trade")
            await asyncio.sleep(0.15)  # nothing from the walk for BTC while paused
            await sim.binance.push_bbo("BTCUSDT", bid="59990.5", ask="60001.25", bid_qty="0.5", ask_qty="2")
            await sim.binance.push_trade("BTCUSDT", price="60001.25", qty="0.1", side="sell")
            frames = await collect(ws, 0.5)
    assert [f["stream"] for f in frames] == ["btcusdt@bookTicker", "btcusdt@depth5@100ms", "btcusdt@trade"]
    bt, depth, trade = (f["data"] for f in frames)
    assert (bt["b"], bt["B"], bt["a"], bt["A"]) == ("59990.50000000", "0.50000000", "60001.25000000", "2.00000000")
    assert depth["bids"][0] == ["59990.50000000", "0.50000000"] and depth["asks"][0] == ["60001.25000000", "2.00000000"]
    assert all(Decimal(p) < Decimal("59990.5") for p, _ in depth["bids"][1:])
    assert (trade["p"], trade["q"], trade["m"]) == ("60001.25000000", "0.10000000", True)
