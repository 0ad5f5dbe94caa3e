"""Shared pre-built frames: the bytes parse as the WebSocket library parses them, and the gateway serves
the same messages whether frames go straight to the socket (``FrameSink``) or through ASGI ``send_text``."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from fastapi import WebSocket
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.app import create_app
from gateway.realtime.frames import as_frame, is_frame, payload_of, text_frame
from gateway.realtime.server import frame_sink
from shared import names
from tests.mdfeed import MdFeed
from tests.servers import make_settings, run_gateway
from tests.wsclient import token, ws_client


def parse(data: bytes) -> tuple[Frame, bytes]:
    """One frame parsed by the websockets library as a client would (unmasked), and what is left."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as e:
        return e.value, bytes(reader.buffer)
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_parses_like_the_library_at_every_length_boundary(n: int) -> None:
    payload = ("é" * n).encode()[:n] if n % 2 == 0 else b"x" * n
    frame = text_frame(payload)
    parsed, rest = parse(frame + b"next")
    assert parsed.opcode is Opcode.TEXT and parsed.fin and bytes(parsed.data) == payload and rest == b"next"
    assert payload_of(frame) == payload
    assert is_frame(frame) and as_frame(frame) is frame


def test_as_frame_frames_text_and_json_bytes() -> None:
    assert as_frame('{"a":1}') == text_frame(b'{"a":1}') == as_frame(b'{"a":1}')
    assert not is_frame(b'{"a":1}') and not is_frame(b"")


PATHS = {
    "sink": ({}, True),  # the gateway's uvicorn options: frames written straight to the socket
    "asgi": ({"ws": "websockets-sansio"}, False),  # plain uvicorn protocol: the writer task sends via ASGI
    "deflate": ({"ws_per_message_deflate": True}, False),  # compression negotiated: no shared frames
}


@pytest.mark.parametrize("path", list(PATHS))
async def test_same_messages_in_order_on_every_send_path(redis_url: str, aredis: aioredis.Redis, path: str) -> None:
    options, sink_expected = PATHS[path]
    app = create_app(make_settings(redis_url))

    @app.websocket("/probe")
    async def probe(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("sink" if frame_sink(ws.scope) is not None else "asgi")
        await ws.close()

    feed = MdFeed(aredis)
    async with run_gateway(redis_url, app=app, uvicorn_options=options) as base:
        async with connect(base.replace("http://", "ws://") + "/probe") as p:
            assert (await p.recv()) == ("sink" if sink_expected else "asgi")
        # binance stays live however slowly a loaded machine gets through the 200 trades (stale_after_s)
        async with ws_client(base, tok=token()) as c, feed.heartbeats("binance"):
            await feed.status("binance")  # ahead of the bbo on the gateway's one pub/sub connection
            await c.subscribe(stream="trades", symbol="BTCUSDT", exchange="all")
            await c.subscribe(stream="best_touch", symbol="BTCUSDT", exchange="binance")
            sent = []
            for i in range(200):
                ex = ("binance", "okx")[i % 2]
                sent.append(await feed.trade(ex, "BTCUSDT", f"64000.{i:02d}", "0.5", trade_id=f"t{i}"))
            await feed.bbo("binance", "BTCUSDT", "64000.10", "1", "64000.20", "2")
            # The bbo reaches the gateway over Redis and the ping over the WebSocket: nothing orders the two
            # (Redis may answer PUBLISH before it writes the message to the subscriber), so a pong is no
            # barrier for it. Its touch comes after every trade (one pub/sub connection, one client queue).
            await c.until(lambda m: m["type"] == "best_touch" and m["data"]["bid_px"] is not None)
            await c.request({"action": "ping", "id": "end"})
            msgs: list[dict[str, Any]] = [orjson.loads(r) for r in c.raw]
            trades = [m["data"]["trade_id"] for m in msgs if m["type"] == "trades"]
            assert trades == [t.trade_id for t in sent]
            assert msgs[-1] == {"type": "pong", "id": "end", "ts_us": msgs[-1]["ts_us"]}
            touch = [m["data"] for m in msgs if m["type"] == "best_touch"]
            assert touch[-1]["bid_px"] == 64000.10 and touch[-1]["ask_sz"] == 2
            if path == "deflate":
                assert c.conn.protocol.extensions  # compression really negotiated


async def test_a_bbo_the_gateway_reads_after_answering_a_ping_still_reaches_the_client(
        redis_url: str, aredis: aioredis.Redis) -> None:
    """The interleaving behind the old flaky failure above (pong before the touch), held on purpose: Redis has
    answered the PUBLISH but the gateway reads the message only after it has answered the client's ping."""
    app = create_app(make_settings(redis_url))
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, app=app) as base:
        hub = app.state.market.hub
        dispatch, held_back = hub._dispatch, list[tuple[str, bytes]]()

        def held(channel: str, raw: bytes) -> None:
            if channel == names.md_channel("bbo", "binance", "BTCUSDT"):
                held_back.append((channel, raw))
            else:
                dispatch(channel, raw)

        hub._dispatch = held
        async with ws_client(base, tok=token()) as c, feed.heartbeats("binance"):
            await feed.status("binance")
            await c.subscribe(stream="best_touch", symbol="BTCUSDT", exchange="binance")
            await feed.bbo("binance", "BTCUSDT", "64000.10", "1", "64000.20", "2")
            await c.request({"action": "ping", "id": "end"})
            assert [m["data"]["bid_px"] for m in map(orjson.loads, c.raw) if m["type"] == "best_touch"] == [None]
            for _ in range(500):  # the gateway reads the bbo from Redis (and holds it, here)
                if held_back:
                    break
                await asyncio.sleep(0.01)
            assert held_back, "the gateway never read the bbo"
            for channel, raw in held_back:
                dispatch(channel, raw)
            d = (await c.until(lambda m: m["type"] == "best_touch"))["data"]
            assert (d["bid_px"], d["ask_sz"], d["live"]) == (64000.10, 2, ["binance"])
