"""kill -9 of the embedded redis-server under `make run FEED=sim` (the real launcher, the real simulator):
the launcher restarts it on the same port and AOF, and every process reconnects by itself: the ingestors
publish again, the gateway's market-data subscription feeds a WebSocket that stayed open, the matcher fills."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from shared import tokens
from tests.launcher_helpers import Launched, launch


def pids(tmp: Path) -> dict[str, int]:
    try:
        return json.loads((tmp / "data" / "pids.json").read_text())
    except (OSError, ValueError):
        return {}


def wait(pred, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        time.sleep(0.1)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).json().get("status") == "ready"
    except (httpx.HTTPError, ValueError):
        return False


@pytest.mark.timeout(150)
def test_launcher_restarts_redis_and_everything_reconnects(tmp_path: Path) -> None:
    with launch(tmp_path) as system:
        try:
            _scenario(system, tmp_path)
        except BaseException:
            system.log.seek(0)
            lines = system.log.read().decode(errors="replace").splitlines()
            print("\n".join(line for line in lines if " INFO " not in line)[-12000:])  # the launcher's log
            raise


def _scenario(system: Launched, tmp_path: Path) -> None:
    if True:
        system.wait_health(60)
        wait(lambda: ready(system.url), 60, "/ready")
        before = pids(tmp_path)
        assert set(before) == {"redis", "simulator", "ingestor-binance", "ingestor-okx", "matcher", "gateway"}, before
        tok = tokens.issue("lr", (tmp_path / "data" / "jwt_secret").read_text().strip(), 600)
        h = {"Authorization": f"Bearer {tok}"}
        assert httpx.post(f"{system.url}/deposit", json={"asset": "USDT", "amount": 100000}, headers=h,
                          timeout=5).status_code == 200
        with connect(f"ws://127.0.0.1:{system.port}/ws?token={tok}", open_timeout=5, close_timeout=2) as ws:
            ws.send(json.dumps({"action": "subscribe", "stream": "best_touch", "symbol": "BTCUSDT",
                                "exchange": "all"}))
            t0, kill_us = time.monotonic(), int(time.time() * 1e6)
            os.kill(before["redis"], signal.SIGKILL)
            wait(lambda: pids(tmp_path).get("redis", before["redis"]) != before["redis"], 30, "a new redis-server")
            restarted_s = time.monotonic() - t0
            wait(lambda: ready(system.url), 60, "/ready after the Redis restart")
            ready_s = time.monotonic() - t0
            # the WebSocket stayed open: best touch flows again with both exchanges live (ingestors republish,
            # the gateway resubscribed); a quote received after the kill can only have come through the new Redis
            deadline = time.monotonic() + 30
            while True:
                left = deadline - time.monotonic()
                assert left > 0, "no fresh best touch on the open WebSocket"
                m = json.loads(ws.recv(timeout=left))
                if (m["type"] == "best_touch" and m["data"]["live"] == ["binance", "okx"]
                        and m["data"]["ts_recv_us"] > kill_us):
                    break
        # the matcher is back: a market order fills
        resp = httpx.post(f"{system.url}/orders", headers=h, timeout=10, json={
            "token_id": "after-redis", "symbol": "BTCUSDT", "side": "buy", "quantity": "0.001", "type": "market"})
        assert resp.status_code == 201 and resp.json()["status"] == "filled", resp.text
        after = pids(tmp_path)
        for name in ("simulator", "ingestor-binance", "ingestor-okx", "matcher", "gateway"):
            assert after[name] == before[name], f"{name} was restarted: it should have reconnected by itself"
        system.log.seek(0)
        out = system.log.read().decode(errors="replace")
        assert "redis-server DIED" in out and "restarted redis-server" in out
        print(f"launcher: kill -9 redis-server: restarted in {restarted_s:.2f}s, /ready again in {ready_s:.2f}s")
