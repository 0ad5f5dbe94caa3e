"""Crash recovery: kill -9 Redis (AOF) and the matcher, restart both on the same data, and everything is there;
open orders still execute. A matcher that loses its Redis connection reconnects and carries on."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from matcher.engine import run_matcher
from shared.embedded_redis import EmbeddedRedis
from tests.servers import make_settings, run_gateway
from tests.trading_helpers import auth, matcher, publish_bbo, publish_status, wait_status, wait_until

pytestmark = pytest.mark.asyncio


def order(token: str, price: int, side: str = "buy") -> dict[str, object]:
    return {"token_id": token, "symbol": "BTCUSDT", "side": side, "price": price, "quantity": 0.01}


# appendfsync "always" (configurable as redis.appendfsync): with the default "everysec" a kill -9 may lose the
# last second of writes, which a busy test machine turns into a flaky test.
async def test_kill_everything_and_restart(tmp_path: Path) -> None:
    srv = EmbeddedRedis(tmp_path / "data", appendfsync="always").start()
    try:
        settings = make_settings(srv.url)
        h = auth(settings, "alice")
        async with run_gateway(srv.url, settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as c:
            r = aioredis.Redis.from_url(srv.url)
            await c.post("/deposit", json={"asset": "USDT", "amount": 5000}, headers=h)
            async with matcher(settings, srv.url):
                await publish_bbo(r, "okx", "BTCUSDT", "49000", "49500")
                await c.post("/orders", json=order("filled", 50000), headers=h)
                await wait_status(c, "filled", "filled", h)
                await c.post("/orders", json=order("open", 48000), headers=h)
                await c.post("/orders", json=order("gone", 47000), headers=h)
                await c.delete("/orders/gone", headers=h)
                before = (await c.get("/balance", headers=h)).json()
                # crash: Redis first, then the matcher (cancelled, no clean shutdown)
                srv.kill()
            await r.aclose()

            srv = EmbeddedRedis(tmp_path / "data", port=srv.port, appendfsync="always").start()
            r = aioredis.Redis.from_url(srv.url)

            async def gateway_back() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await c.get("/balance", headers=h)).status_code == 200
                return False

            await wait_until(gateway_back, 10, "gateway to reach the new redis")
            assert (await c.get("/balance", headers=h)).json() == before
            assert (await c.get("/orders/filled", headers=h)).json()["status"] == "filled"
            assert (await c.get("/orders/gone", headers=h)).json()["status"] == "cancelled"
            assert (await c.get("/orders/open", headers=h)).json()["status"] == "open"
            assert (await c.get("/fills", headers=h)).json()["total"] == 1
            assert (await c.post("/orders", json=order("open", 48000), headers=h)).status_code == 409

            # placed while no matcher runs
            await c.post("/orders", json=order("while-down", 47500), headers=h)
            async with matcher(settings, srv.url):
                await publish_bbo(r, "okx", "BTCUSDT", "46000", "47400")
                await wait_status(c, "open", "filled", h)
                await wait_status(c, "while-down", "filled", h)
            await r.aclose()
    finally:
        srv.stop()


async def test_matcher_reconnects_after_redis_restart(tmp_path: Path) -> None:
    srv = EmbeddedRedis(tmp_path / "data", appendfsync="always").start()
    stop, ready = asyncio.Event(), asyncio.Event()
    settings = make_settings(srv.url)
    task = asyncio.create_task(run_matcher(settings, stop, redis_url=srv.url, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        h = auth(settings, "alice")
        async with run_gateway(srv.url, settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as c:
            await c.post("/deposit", json={"asset": "USDT", "amount": 5000}, headers=h)
            srv.kill()
            ready.clear()
            srv = EmbeddedRedis(tmp_path / "data", port=srv.port, appendfsync="always").start()
            await asyncio.wait_for(ready.wait(), 15)  # the matcher reconnected and rebuilt its index
            r = aioredis.Redis.from_url(srv.url)
            try:
                await publish_status(r, "okx")
                await publish_bbo(r, "okx", "BTCUSDT", "49000", "49500")
                resp = await c.post("/orders", json=order("after", 50000), headers=h)
                assert resp.status_code == 201, resp.text
                o = await wait_status(c, "after", "filled", h)
                assert o["average_price"] == 49500
            finally:
                await r.aclose()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        srv.stop()
