"""Regression tests for the defects fault injection found (docs/operations.md, "Faults and recovery")."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import names
from shared.embedded_redis import EmbeddedRedis
from shared.redis_conn import Connection, connect
from tests.faults import publish_bbo
from tests.servers import make_settings, run_gateway
from tests.stack import feed_heartbeats
from tests.trading_helpers import auth
from tests.wsclient import token, ws_client


def test_a_write_on_a_connection_redis_closed_is_a_connection_error_under_uvloop(tmp_path: Path) -> None:
    """uvloop raises RuntimeError ("the handler is closed") when redis-py writes to a socket whose transport the
    server's close has already shut; redis-py let it through. Seen when a WebSocket client subscribed just as
    Redis died: the subscribe raised it, the connection's reader died and the client saw an abrupt close
    (no close frame, nothing logged). It is now redis-py's ConnectionError, which every caller handles."""
    srv = EmbeddedRedis(tmp_path).start()

    async def write_after_close(cls: type[aioredis.Connection]) -> None:
        c = cls(host="127.0.0.1", port=srv.port, socket_timeout=5)
        await c.connect()
        c._writer.transport.close()  # what the server's close does to the transport  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        await c.send_packed_command(b"PING\r\n", check_health=False)

    try:
        with pytest.raises(RuntimeError):  # the raw redis-py behaviour this works around
            uvloop.run(write_after_close(aioredis.Connection))
        with pytest.raises(RedisConnectionError):
            uvloop.run(write_after_close(Connection))
        assert connect(srv.url).connection_pool.connection_class is Connection
    finally:
        srv.stop()


@pytest.mark.asyncio
async def test_gateway_subscriptions_made_while_redis_is_down_come_back(tmp_path: Path) -> None:
    """A WebSocket client subscribes while Redis is down: each subscribe failed, the hub's reader then called
    get_message on a pub/sub with no connection in a busy loop (RuntimeError, 100 % CPU) and never subscribed
    again: no best touch, no order event, ever. Now the reader reconnects and subscribes what is wanted."""
    srv = EmbeddedRedis(tmp_path / "r", appendfsync="always").start()
    settings = make_settings(srv.url)
    try:
        async with run_gateway(srv.url, settings) as base, feed_heartbeats(srv.url, "okx", "binance"), \
                ws_client(base, tok=token("down")) as ws:
            # The token in the URL is checked after the handshake (it reads the user's revocation state from Redis),
            # before any message is read: a pong means that is done before Redis goes.
            assert (await ws.request({"action": "ping"}, within=10))["type"] == "pong"
            srv.kill()
            for stream in ({"stream": "best_touch", "symbol": "BTCUSDT", "exchange": "all"}, {"stream": "orders"}):
                reply = await ws.request({"action": "subscribe", **stream}, within=10)
                assert reply["type"] == "ack", reply
            await asyncio.sleep(1.0)
            srv = EmbeddedRedis(tmp_path / "r", port=srv.port, appendfsync="always").start()
            r = aioredis.Redis.from_url(srv.url)
            try:
                deadline = time.monotonic() + 20
                while True:
                    assert time.monotonic() < deadline, "no best touch after Redis came back"
                    await publish_bbo(r, "okx", "48000", "48100")
                    try:
                        await ws.until(lambda m: m["type"] == "best_touch" and m["data"]["ask_px"] == 48100, 0.5)
                        break
                    except TimeoutError:
                        pass
                # The order events have a connection of their own, back on its own backoff (up to 5 s): an event
                # published before it has resubscribed is not for it (pub/sub keeps nothing), so wait for that.
                channel = names.user_events_channel("down")
                while (await r.pubsub_numsub(channel))[0][1] < 1:
                    assert time.monotonic() < deadline, "the order events never resubscribed after Redis came back"
                    await asyncio.sleep(0.1)
                async with httpx.AsyncClient(base_url=base, timeout=5) as c:
                    h = auth(settings, "down")
                    assert (await c.post("/deposit", json={"asset": "USDT", "amount": 100},
                                         headers=h)).status_code == 200
                    body = {"token_id": "d1", "symbol": "BTCUSDT", "side": "buy", "price": 40000, "quantity": 0.001}
                    assert (await c.post("/orders", json=body, headers=h)).status_code == 201
                ev = await ws.until(lambda m: m["type"] == "order", 10)
                assert ev["data"]["event"] == "accepted" and ev["data"]["order"]["token_id"] == "d1"
            finally:
                await r.aclose()
    finally:
        srv.stop()
