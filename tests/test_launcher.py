"""`make run FEED=sim` end to end: the launcher starts Redis and every process, and Ctrl-C stops them all."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from websockets.sync.client import connect

from shared import tokens
from tests.launcher_helpers import Launched, launch


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Launched]:
    with launch(tmp_path) as system:
        yield system


def test_run_sim_starts_everything_and_ctrl_c_stops_it(launched: Launched, tmp_path: Path) -> None:
    proc, port, log, tmp = launched.proc, launched.port, launched.log, tmp_path
    launched.wait_health(40)
    assert (tmp / "data" / "jwt_secret").exists()
    assert (tmp / "data" / "redis" / "redis.log").exists()
    log.seek(0)
    m = re.search(rb"redis-cli -p (\d+)", log.read())
    assert m, "the launcher did not print how to inspect Redis"
    _market_data_flows(int(m.group(1)))
    _gateway_best_touch(port, (tmp / "data" / "jwt_secret").read_text().strip())
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    log.seek(0)
    out = log.read().decode(errors="replace")
    for name in ("simulator", "ingestor-binance", "ingestor-okx", "matcher", "gateway"):
        assert f"started {name}" in out, out[-3000:]
    assert "all processes stopped" in out and "redis-server stopped" in out
    assert "DIED" not in out, out[-3000:]


def _market_data_flows(redis_port: int, within: float = 30) -> None:
    """What ``redis-cli -p <port> PSUBSCRIBE 'md:*'`` shows: bbo, book and trades of both exchanges."""
    r = redis.Redis(port=redis_port)
    ps = r.pubsub()
    try:
        ps.psubscribe("md:*")
        wanted = {f"md:{kind}:{ex}" for kind in ("bbo", "book", "trade") for ex in ("binance", "okx")}
        wanted |= {"md:status:binance", "md:status:okx"}
        seen: set[str] = set()
        deadline = time.monotonic() + within
        while not wanted <= seen and time.monotonic() < deadline:
            msg = ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                seen.add(":".join(msg["channel"].decode().split(":")[:3]))
        assert wanted <= seen, f"missing {sorted(wanted - seen)}"
        for ex in ("binance", "okx"):
            assert r.hget(f"md:feed:{ex}", "state") == b"up"
            assert r.get(f"md:last:bbo:{ex}:BTCUSDT")
    finally:
        ps.close()
        r.close()


def _gateway_best_touch(port: int, jwt_secret: str, within: float = 15) -> None:
    tok = tokens.issue("e2e", jwt_secret, 600)
    with connect(f"ws://127.0.0.1:{port}/ws?token={tok}", open_timeout=5, close_timeout=2) as ws:
        ws.send(json.dumps({"action": "subscribe", "stream": "best_touch", "symbol": "BTCUSDT", "exchange": "all"}))
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no best touch with both exchanges live"
            m = json.loads(ws.recv(timeout=left))
            if m["type"] == "best_touch" and m["data"]["live"] == ["binance", "okx"]:
                d = m["data"]
                assert d["bid_px"] < d["ask_px"] or d["crossed"]
                assert d["bid_exchange"] in ("binance", "okx") and d["ask_exchange"] in ("binance", "okx")
                return
