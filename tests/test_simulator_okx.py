"""The simulated OKX over a real websockets client: acks, errors, ping/pong, idle close, push frames."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.simtools import collect, recv_json, recv_until, running

ARGS = [{"channel": c, "instId": "BTC-USDT"} for c in ("bbo-tbt", "books5", "trades", "tickers")]


def is_push(m: object) -> bool:
    return isinstance(m, dict) and "data" in m


async def test_subscribe_acks_and_push_frames() -> None:
    async with running(okx_idle_timeout=5, rate=3) as sim:  # x3 so some Poisson trades surely arrive
        async with connect(sim.okx_url) as ws:
            await ws.send(orjson.dumps({"id": "7", "op": "subscribe", "args": ARGS}).decode())
            acks = [await recv_until(ws, lambda m: m.get("event") == "subscribe") for _ in ARGS]
            assert [a["arg"] for a in acks] == ARGS
            assert all(a["id"] == "7" and len(a["connId"]) == 8 for a in acks)
            frames = [f for f in await collect(ws, 1.2) if is_push(f)]
    by_channel: dict[str, list[dict]] = {}
    for f in frames:
        assert set(f) == {"arg", "data"} and isinstance(f["data"], list) and len(f["data"]) == 1
        by_channel.setdefault(f["arg"]["channel"], []).append(f["data"][0])
    assert set(by_channel) == {"bbo-tbt", "books5", "trades", "tickers"}
    for d in by_channel["books5"]:
        assert set(d) == {"asks", "bids", "instId", "ts", "seqId"}
        assert len(d["asks"]) == 5 and len(d["bids"]) == 5 and d["instId"] == "BTC-USDT"
        assert all(len(lv) == 4 and lv[2] == "0" and all(isinstance(x, str) for x in lv) for lv in d["asks"] + d["bids"])
        assert isinstance(d["ts"], str) and isinstance(d["seqId"], int)
        assert Decimal(d["bids"][0][0]) < Decimal(d["asks"][0][0])
    assert 20 <= len(by_channel["books5"]) <= 40  # every 100 ms / 3
    for d in by_channel["bbo-tbt"]:
        assert set(d) == {"asks", "bids", "ts", "seqId"} and len(d["asks"]) == len(d["bids"]) == 1
    for d in by_channel["trades"]:
        assert set(d) == {"instId", "tradeId", "px", "sz", "side", "ts", "count", "source", "seqId"}
        assert d["side"] in ("buy", "sell") and isinstance(d["px"], str) and isinstance(d["tradeId"], str)
    for d in by_channel["tickers"]:
        assert d["instType"] == "SPOT" and d["instId"] == "BTC-USDT"
        assert Decimal(d["bidPx"]) < Decimal(d["askPx"])
    seqs = [d["seqId"] for d in by_channel["books5"]]
    assert seqs == sorted(seqs)


async def test_errors_keep_the_connection_open() -> None:
    async with running() as sim:
        async with connect(sim.okx_url) as ws:
            await ws.send("{not json")
            e = await recv_json(ws)
            assert (e["event"], e["code"]) == ("error", "60012") and e["connId"]
            await ws.send('{"id":"2","op":"subscribe","args":[{"channel":"candle1m","instId":"BTC-USDT"}]}')
            e = await recv_json(ws)
            assert (e["event"], e["code"], e["id"]) == ("error", "60018", "2")
            assert "candle1m" in e["msg"]
            await ws.send('{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT-SWAP"}]}')
            assert (await recv_json(ws))["code"] == "60018"
            await ws.send('{"op":"fly","args":[]}')
            assert (await recv_json(ws))["code"] == "60019"
            assert sim.okx.subscriptions() == set()


async def test_ping_pong_and_unsubscribe() -> None:
    async with running() as sim:
        async with connect(sim.okx_url) as ws:
            await ws.send("ping")
            assert await asyncio.wait_for(ws.recv(), 2) == "pong"
            assert sim.okx.pings_received == 1
            await ws.send('{"op":"subscribe","args":[{"channel":"bbo-tbt","instId":"ETH-USDT"}]}')
            await recv_until(ws, is_push)
            await ws.send('{"op":"unsubscribe","args":[{"channel":"bbo-tbt","instId":"ETH-USDT"}]}')
            ack = await recv_until(ws, lambda m: "event" in m)
            assert ack == {"event": "unsubscribe", "arg": {"channel": "bbo-tbt", "instId": "ETH-USDT"},
                           "connId": ack["connId"]}
            assert not [f for f in await collect(ws, 0.4) if is_push(f)]


async def test_idle_connection_closed_with_4004_unless_pinged() -> None:
    async with running(okx_idle_timeout=0.6) as sim:
        async with connect(sim.okx_url) as quiet, connect(sim.okx_url) as chatty:
            for _ in range(4):
                await chatty.send("ping")
                await asyncio.sleep(0.3)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(quiet.recv(), 3)
            assert quiet.close_code == 4004
            assert chatty.state.name == "OPEN"
        assert sim.okx.idle_closes == 1


async def test_wrong_path_is_404() -> None:
    async with running() as sim:
        with pytest.raises(InvalidStatus) as e:
            async with connect(sim.okx_url.replace("public", "business")):
                pass
        assert e.value.response.status_code == 404


async def test_push_exact_prices_while_paused() -> None:
    async with running() as sim:
        sim.pause("BTCUSDT", exchange="okx")
        async with connect(sim.okx_url) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "args": ARGS[:3]}).decode())
            await sim.okx.wait_subscribed(("trades", "BTC-USDT"))
            await asyncio.sleep(0.15)
            await sim.okx.push_bbo("BTCUSDT", bid="59999.9", ask="60000.1", bid_qty="1.5", ask_qty="0.25")
            await sim.okx.push_trade("BTCUSDT", price="60000.1", qty="0.01", side="buy")
            frames = [f for f in await collect(ws, 0.5) if is_push(f)]
    assert [f["arg"]["channel"] for f in frames] == ["bbo-tbt", "books5", "trades"]
    bbo, book, trade = (f["data"][0] for f in frames)
    assert bbo["bids"] == [["59999.9", "1.5", "0", "1"]] and bbo["asks"] == [["60000.1", "0.25", "0", "1"]]
    assert book["asks"][0][:2] == ["60000.1", "0.25"] and book["bids"][0][:2] == ["59999.9", "1.5"]
    assert (trade["px"], trade["sz"], trade["side"]) == ("60000.1", "0.01", "buy")


async def test_busy_subscription_is_never_idle_closed() -> None:
    """OKX's rule is about data pushed: a client that only reads a busy channel is not dropped."""
    async with running(okx_idle_timeout=0.6, rate=3) as sim:
        async with connect(sim.okx_url) as reader:
            await reader.send(orjson.dumps({"op": "subscribe", "args": [ARGS[1]]}).decode())  # books5: 10/s
            frames = await collect(reader, 2.0)
            assert len([f for f in frames if is_push(f)]) >= 10
            assert reader.state.name == "OPEN"
        assert sim.okx.idle_closes == 0


async def test_connection_rate_limit_when_enabled() -> None:
    """OKX allows 3 connection requests/s per IP: with ``okx_connect_limit=3`` the 4th handshake within a second
    is refused with 429; subscribe requests are counted per connection."""
    async with running(okx_connect_limit=3) as sim:
        conns = [await connect(sim.okx_url) for _ in range(3)]
        with pytest.raises(InvalidStatus) as e:
            await connect(sim.okx_url)
        assert e.value.response.status_code == 429 and sim.okx.connect_refusals == 1
        await conns[0].send('{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}')
        await recv_until(conns[0], lambda m: m.get("event") == "subscribe")
        assert sorted(sim.okx.requests_by_conn.values()) == [1]
        for c in conns:
            await c.close()
        await asyncio.sleep(1.05)
        async with connect(sim.okx_url):
            pass  # a second later the budget is back
    async with running() as sim:  # off by default
        conns = [await connect(sim.okx_url) for _ in range(5)]
        for c in conns:
            await c.close()
        assert sim.okx.connect_refusals == 0
