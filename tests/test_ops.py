"""Operations over real HTTP against a real redis-server: /health, /ready, /metrics, the ingestor's and matcher's
metrics endpoints, JSON log lines, and the JWT secret kept in Redis when none is configured."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.server import ServerConnection

from gateway.app import create_app
from ingestor.metrics import ingestor_registry
from ingestor.service import Ingestor
from recorder import store
from shared import names
from shared.embedded_redis import free_port
from shared.logs import JsonFormatter
from shared.settings import ROOT
from shared.timeutil import now_us
from tests.ingestor_helpers import doc_settings, scripted_server
from tests.mdfeed import MdFeed
from tests.servers import make_settings, run_gateway
from tests.test_gateway_ws import RawClient
from tests.trading_helpers import matcher, wait_until
from tests.wsclient import token, ws_client

FAST = {"SR_FEEDS__STALE_AFTER_S": "1"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, keyed by (name, sorted labels); the parser validates the text."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(smp: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in smp.items() if n == name and all((k, labels[k]) in lab for k in labels))


async def scrape(c: httpx.AsyncClient, url: str = "/metrics") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await c.get(url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


# --- /health and /ready ------------------------------------------------------------------------------


async def test_health_and_ready_follow_feeds_and_matcher(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST) as base, httpx.AsyncClient(base_url=base, timeout=10) as c:
        r = await c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}

        r = await c.get("/ready")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "not_ready" and body["redis"]["ok"] is True
        assert body["matcher"]["alive"] is False
        assert body["feeds"]["binance"]["state"] == "unknown" and not body["feeds"]["okx"]["live"]
        assert any("matcher not alive" in p for p in body["problems"])

        async with feed.heartbeats("binance", "okx", every_s=0.2, matcher=True) as alive:
            async def status_is(want: str) -> bool:
                nonlocal body
                r = await c.get("/ready")
                body = r.json()
                return body["status"] == want and r.status_code == (503 if want == "not_ready" else 200)

            await wait_until(lambda: status_is("ready"), 10, "ready")
            assert body["problems"] == [] and body["matcher"]["heartbeat_age_s"] < 5
            assert body["feeds"]["okx"] == {**body["feeds"]["okx"], "state": "up", "live": True}
            assert body["feeds"]["okx"]["heartbeat_age_s"] < 1

            alive.discard("okx")  # okx's ingestor dies without a word: stale after 1 s -> degraded, still 200
            await wait_until(lambda: status_is("degraded"), 10, "degraded")
            assert body["feeds"]["okx"]["state"] == "down" and body["feeds"]["binance"]["live"]
            assert any(p.startswith("okx: feed is down") for p in body["problems"])

            alive.discard("matcher")
            await aredis.delete(names.MATCHER_ALIVE_KEY)
            await wait_until(lambda: status_is("not_ready"), 10, "not ready without the matcher")


async def test_ready_reports_redis_unreachable(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with run_gateway(dead) as base, httpx.AsyncClient(base_url=base, timeout=10) as c:
        assert (await c.get("/health")).status_code == 200
        r = await c.get("/ready")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "not_ready" and body["redis"]["ok"] is False and body["redis"]["error"]
    assert body["problems"][0].startswith("redis unreachable")


async def test_ops_routes_documented_in_openapi(redis_url: str) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        spec = (await c.get("/openapi.json")).json()
    ready = spec["paths"]["/ready"]["get"]["responses"]
    assert ready["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ReadyOut")
    assert ready["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/ReadyOut")
    assert spec["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"].endswith("/HealthOut")
    assert CONTENT_TYPE_LATEST in spec["paths"]["/metrics"]["get"]["responses"]["200"][
        "content"]


# --- /metrics ---------------------------------------------------------------------------------------


async def test_gateway_metrics_move_with_ws_and_rest_traffic(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base, timeout=10) as c:
        before = await scrape(c)
        async with feed.heartbeats("binance", "okx", every_s=0.2, matcher=True):
            async with ws_client(base, tok=token("metrics-user")) as ws:
                await ws.subscribe(stream="best_touch", symbol="BTCUSDT", exchange="all")
                await ws.subscribe(stream="trades", symbol="BTCUSDT", exchange="okx")
                mid = await scrape(c)
                assert total(mid, "sr_gateway_ws_connections") - total(before, "sr_gateway_ws_connections") == 1
                assert total(mid, "sr_gateway_ws_subscriptions", stream="trades") - total(
                    before, "sr_gateway_ws_subscriptions", stream="trades") == 1
                for i in range(5):
                    await feed.trade("okx", "BTCUSDT", f"64000.{i}", "0.01")
                    await ws.until(lambda m: m["type"] == "trades")
                await feed.bbo("binance", "BTCUSDT", "64000.1", "1", "64000.2", "2")
                await ws.until(lambda m: m["type"] == "best_touch" and m["data"]["bid_px"] is not None)

                async def sent_moved() -> bool:
                    now = await scrape(c)
                    return total(now, "sr_gateway_ws_messages_sent_total") - total(
                        before, "sr_gateway_ws_messages_sent_total") >= 8  # 2 acks + 5 trades + a touch
                await wait_until(sent_moved, 5, "messages sent counter")

            # REST: register, deposit, one order placed and one rejected
            r = await c.post("/register", json={"username": "metrics_alice", "password": "correct horse"})
            assert r.status_code == 201
            h = {"Authorization": "Bearer " + r.json()["access_token"]}
            assert (await c.post("/deposit", json={"asset": "USDT", "amount": 1000}, headers=h)).status_code == 200
            order = {"token_id": "m1", "symbol": "BTCUSDT", "side": "buy", "price": 100, "quantity": 0.1}
            assert (await c.post("/orders", json=order, headers=h)).status_code == 201
            r = await c.post("/orders", json={**order, "token_id": "m2", "quantity": 1000}, headers=h)
            assert r.status_code == 400 and r.json()["code"] == "insufficient_balance"
            assert (await c.get("/orders/m1", headers=h)).status_code == 200

            after = await scrape(c)
    d = lambda name, **kw: total(after, name, **kw) - total(before, name, **kw)  # noqa: E731
    assert d("sr_gateway_ws_connections") == 0  # the client left
    assert d("sr_gateway_ws_subscriptions") == 0
    assert d("sr_gateway_orders_total", result="placed") == 1
    assert d("sr_gateway_orders_total", result="rejected", code="insufficient_balance") == 1
    assert d("sr_gateway_http_request_duration_seconds_count", route="/orders/{token_id}", method="GET",
             status="200") == 1
    assert d("sr_gateway_http_request_duration_seconds_count", route="/orders", status="400") == 1
    assert d("sr_gateway_http_request_duration_seconds_count", route="/orders", method="POST", status="201") == 1
    assert d("sr_gateway_http_request_duration_seconds_count", route="/metrics") >= 3
    assert total(after, "sr_feed_state", exchange="okx", state="up") == 1
    assert 0 <= total(after, "sr_feed_heartbeat_age_seconds", exchange="binance") < 5
    assert total(after, "sr_redis_up") == 1 and total(after, "sr_matcher_alive") == 1


async def test_slow_client_close_and_drops_are_counted(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, SR_WS__QUEUE_MAX="5") as base, httpx.AsyncClient(base_url=base) as c:
        before = await scrape(c)
        slow = await RawClient.open(base, token("slow"))  # reads nothing: socket buffers fill, then its queue
        try:
            await slow.send({"action": "subscribe", "stream": "trades", "symbol": "ETHUSDT", "exchange": "okx"})
            pad = "p" * 4000

            async def closed() -> bool:
                for i in range(100):
                    await feed.trade("okx", "ETHUSDT", "3000.1", "1", trade_id=f"{i}-{pad}")
                now = await scrape(c)
                return total(now, "sr_gateway_ws_slow_closes_total", code="4008") > total(
                    before, "sr_gateway_ws_slow_closes_total", code="4008")
            await wait_until(closed, 60, "a slow-client close")
        finally:
            slow.sock.close()
        after = await scrape(c)
    assert total(after, "sr_gateway_ws_dropped_total") > total(before, "sr_gateway_ws_dropped_total")


# --- secret fallback ----------------------------------------------------------------------------------


async def test_secret_kept_in_redis_shared_by_gateways_and_survives_restart(redis_url: str,
                                                                            aredis: aioredis.Redis,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(redis_url, JWT_SECRET="")
    assert settings.auth.jwt_secret == ""
    caplog.set_level(logging.WARNING, "gateway")
    async with run_gateway(redis_url, app=create_app(settings)) as a, \
            run_gateway(redis_url, app=create_app(settings)) as b:
        async with httpx.AsyncClient(base_url=a) as ca, httpx.AsyncClient(base_url=b) as cb:
            r = await ca.post("/register", json={"username": "secret_bob", "password": "correct horse"})
            assert r.status_code == 201
            tok = r.json()["access_token"]
            me = await cb.get("/me", headers={"Authorization": f"Bearer {tok}"})
            assert me.status_code == 200 and me.json()["username"] == "secret_bob"
        async with ws_client(b, tok=tok) as ws:
            assert (await ws.request({"action": "ping"}))["type"] == "pong"
    stored = await aredis.get(names.JWT_SECRET_KEY)
    assert stored is not None and len(stored) >= 32
    assert any("JWT secret" in rec.getMessage() for rec in caplog.records)
    async with run_gateway(redis_url, app=create_app(settings)) as again, httpx.AsyncClient(base_url=again) as c:
        me = await c.get("/me", headers={"Authorization": f"Bearer {tok}"})
        assert me.status_code == 200
    assert await aredis.get(names.JWT_SECRET_KEY) == stored
    # a configured secret wins over the stored one: the token is no longer valid there
    async with run_gateway(redis_url) as other, httpx.AsyncClient(base_url=other) as c:
        assert (await c.get("/me", headers={"Authorization": f"Bearer {tok}"})).status_code == 401


# --- the gateway process: multiprocess metrics, JSON logs, secret from Redis ------------------------


@contextlib.asynccontextmanager
async def process(*argv: str, env: dict[str, str]) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """A child process whose stderr lines are collected; SIGTERM and wait at the end (kill if it hangs)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, *argv, env={**os.environ, **env}, cwd=ROOT,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                                                start_new_session=True)
    lines: list[str] = []

    async def pump() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            lines.append(line.decode(errors="replace").rstrip("\n"))

    reader = asyncio.create_task(pump())
    try:
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader, 5)


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines if line.startswith("{")]


async def test_gateway_process_two_workers_sums_metrics_and_logs_json(redis_url: str,
                                                                      aredis: aioredis.Redis) -> None:
    port = free_port()
    env = {"REDIS_URL": redis_url, "PORT": str(port), "JWT_SECRET": "", "SR_AUTH__JWT_SECRET": "",
           "SR_GATEWAY__WORKERS": "2", "LOG_JSON": "1", "SR_AUTH__BCRYPT_ROUNDS": "4"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    base = f"http://127.0.0.1:{port}"
    async with process("-m", "gateway", env=env) as (proc, lines), httpx.AsyncClient(base_url=base,
                                                                                       timeout=10) as c:
        async def up() -> bool:
            assert proc.returncode is None, "\n".join(lines[-20:])
            try:
                return (await c.get("/health")).status_code == 200
            except httpx.TransportError:
                return False
        await wait_until(up, 60, "gateway process")
        n = 40
        for _ in range(n):  # new connections, so both workers get some
            async with httpx.AsyncClient(base_url=base) as one:
                assert (await one.get("/health")).status_code == 200
        smp = await scrape(c)
        assert total(smp, "sr_gateway_http_request_duration_seconds_count", route="/health") >= n
        pids = {rec["pid"] for rec in json_lines(lines) if rec.get("event") == "http_access"}
        r = await c.post("/register", json={"username": "proc_carol", "password": "correct horse"})
        assert r.status_code == 201
    assert await aredis.get(names.JWT_SECRET_KEY) is not None  # both workers agreed on it (SET NX)
    recs = json_lines(lines)
    assert recs, lines[-20:]
    assert all({"ts", "level", "process", "logger", "msg"} <= set(rec) for rec in recs)
    access = [rec for rec in recs if rec.get("event") == "http_access"]
    assert access and access[0]["path"] == "/health" and access[0]["status"] == 200 and access[0]["method"] == "GET"
    assert any(rec.get("event") == "jwt_secret_from_redis" for rec in recs)
    assert any(rec["logger"].startswith("uvicorn") and rec["level"] == "INFO" for rec in recs)
    assert len(pids) >= 1


# --- ingestor and matcher endpoints -------------------------------------------------------------------


def test_ingestor_collector_reads_its_counters(tmp_path: Path) -> None:
    ing = Ingestor(doc_settings(tmp_path), "binance", aioredis.Redis.from_url("redis://127.0.0.1:1/0"))
    reg: CollectorRegistry = ingestor_registry(ing)
    ing.on_frame(b"garbage", now_us())
    ing.on_frame(b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"2","B":"1","a":"1","A":"1"}}',
                 now_us())
    ing.on_frame(b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}}',
                 now_us())
    assert ing.publisher.on_batch is not None
    ing.publisher.on_batch(1)
    smp = samples(generate_latest(reg).decode())
    assert total(smp, "sr_ingestor_frames_total", exchange="binance") == 3
    assert total(smp, "sr_ingestor_rejected_frames_total", reason="bad_json") == 1
    assert total(smp, "sr_ingestor_rejected_frames_total", reason="crossed") == 1
    assert total(smp, "sr_ingestor_messages_total", exchange="binance", channel="bbo") == 1
    assert total(smp, "sr_ingestor_feed_state", state="down") == 1
    assert total(smp, "sr_ingestor_publish_batch_size_count", exchange="binance") == 1


async def test_ingestor_process_serves_metrics_and_logs_connection_changes_as_json(redis_url: str,
                                                                                  tmp_path: Path) -> None:
    async def exchange(ws: ServerConnection) -> None:
        async for msg in ws:
            if msg != "ping" and orjson.loads(msg)["args"][0]["channel"] == "trades":
                await ws.send(orjson.dumps({"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [
                    {"instId": "BTC-USDT", "tradeId": "1", "px": "42219.9", "sz": "0.1", "side": "buy",
                     "ts": "1630048897897"}]}).decode())

    mport = free_port()
    async with scripted_server(exchange) as srv:
        env = {"REDIS_URL": redis_url, "OKX_WS_URL": srv.url, "LOG_JSON": "1",
               "SR_METRICS__INGESTOR_OKX_PORT": str(mport), "SR_RECORDING__ENABLED": "true",
               "SR_RECORDING__DIR": str(tmp_path / "rec")}
        async with process("-m", "ingestor", "okx", env=env) as (proc, lines), httpx.AsyncClient(timeout=5) as c:
            smp: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

            async def traded() -> bool:
                nonlocal smp
                assert proc.returncode is None, "\n".join(lines[-20:])
                try:
                    smp = await scrape(c, f"http://127.0.0.1:{mport}/metrics")
                except httpx.TransportError:
                    return False
                return total(smp, "sr_ingestor_messages_total", channel="trade") >= 1 \
                    and total(smp, "sr_ingestor_recorded_frames_total") >= 1
            await wait_until(traded, 30, "a trade counted and recorded on the ingestor's metrics endpoint")
    assert total(smp, "sr_ingestor_connected", exchange="okx") == 1
    assert total(smp, "sr_ingestor_publish_batch_size_count", exchange="okx") >= 1
    assert ("sr_ingestor_reconnects_total", (("exchange", "okx"),)) in smp
    assert total(smp, "sr_ingestor_recording_dropped_total") == 0 == total(smp, "sr_ingestor_recording_errors_total")
    recorded = [r.raw for f in store.recording_files(tmp_path / "rec") for r in store.read_records(f)]
    assert any(isinstance(r, str) and '"tradeId":"1"' in r for r in recorded)  # as the exchange sent it
    recs = json_lines(lines)
    conn = [r for r in recs if r.get("event") == "exchange_connection"]
    assert conn and conn[0]["exchange"] == "okx" and {"from", "to", "reason"} <= set(conn[0])
    assert any(r.get("event") == "exchange_connection" and r["to"] == "connected" for r in recs)
    assert any(r.get("event") == "metrics_listening" and r["port"] == mport for r in recs)


async def test_matcher_process_heartbeat_metrics_and_gateway_ready(redis_url: str, aredis: aioredis.Redis) -> None:
    mport = free_port()
    env = {"REDIS_URL": redis_url, "LOG_JSON": "1", "SR_METRICS__MATCHER_PORT": str(mport)}
    feed = MdFeed(aredis)
    async with process("-m", "matcher", env=env) as (proc, lines):
        async def beating() -> bool:
            assert proc.returncode is None, "\n".join(lines[-20:])
            return await aredis.get(names.MATCHER_ALIVE_KEY) is not None
        await wait_until(beating, 30, "the matcher heartbeat")
        assert 0 < await aredis.pttl(names.MATCHER_ALIVE_KEY) <= 5000
        async with feed.heartbeats("binance", "okx", every_s=0.2), run_gateway(redis_url) as base, \
                httpx.AsyncClient(timeout=5) as c:
            async def ready() -> bool:
                return (await c.get(base + "/ready")).status_code == 200
            await wait_until(ready, 10, "ready with a real matcher")
            smp = await scrape(c, f"http://127.0.0.1:{mport}/metrics")
        assert ("sr_matcher_open_orders", ()) in smp
        assert total(smp, "sr_matcher_loop_seconds_count") >= 1
        assert total(smp, "sr_matcher_recoveries_total") >= 1
    assert proc.returncode == 0
    assert await aredis.get(names.MATCHER_ALIVE_KEY) is None  # a clean stop removes the heartbeat at once


async def test_fills_and_rejections_logged_as_events(redis_url: str, aredis: aioredis.Redis,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    feed = MdFeed(aredis)
    settings = make_settings(redis_url)
    async with matcher(settings, redis_url), feed.heartbeats("binance", "okx", every_s=0.2), \
            run_gateway(redis_url, settings=settings) as base, httpx.AsyncClient(base_url=base) as c:
        await feed.bbo("okx", "BTCUSDT", "64000", "1", "64000.1", "2")
        r = await c.post("/register", json={"username": "fill_dave", "password": "correct horse"})
        h = {"Authorization": "Bearer " + r.json()["access_token"]}
        await c.post("/deposit", json={"asset": "USDT", "amount": 100000}, headers=h)
        r = await c.post("/orders", json={"token_id": "f1", "symbol": "BTCUSDT", "side": "buy", "price": 64100,
                                          "quantity": 0.01}, headers=h)
        assert r.status_code == 201
        r = await c.post("/orders", json={"token_id": "f2", "symbol": "BTCUSDT", "side": "buy", "price": 64100.001,
                                          "quantity": 0.01}, headers=h)
        assert r.status_code == 422

        async def filled() -> bool:
            return (await c.get("/orders/f1", headers=h)).json()["status"] == "filled"
        await wait_until(filled, 10, "fill")
    events = {getattr(rec, "fields", {}).get("event"): rec for rec in caplog.records if hasattr(rec, "fields")}
    fill = events["fill"].fields  # type: ignore[attr-defined]
    assert (fill["token_id"], fill["price"], fill["quantity"], fill["exchange"]) == ("f1", "64000.1", "0.01", "okx")
    assert events["order_filled"].fields["status"] == "filled"  # type: ignore[attr-defined]
    rej = events["order_rejected"].fields  # type: ignore[attr-defined]
    assert rej["code"] == "invalid_price" and rej["token_id"] == "f2" and rej["reason"]
    line = orjson.loads(JsonFormatter().format(events["fill"]))
    assert line["event"] == "fill" and line["msg"].startswith("fill f1") and line["level"] == "INFO"
