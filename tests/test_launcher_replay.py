"""`make run FEED=replay`: the launcher records a live (simulated) period, then replays it through the whole
system in the space ``replay``; a paper order fills against the replayed touch and the live account is untouched.
The captures replay with the same command."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from websockets.sync.client import connect

from shared import tokens
from shared.settings import ROOT
from tests.launcher_helpers import Launched, launch

REPLAY = [sys.executable, "-m", "launcher", "--feed", "replay"]


def _redis_port(system: Launched) -> int:
    m = re.search(r"redis-cli -p (\d+)", system.output())
    assert m, "the launcher did not print how to inspect Redis"
    return int(m.group(1))


def _touch(port: int, tok: str, exchange: str, within: float = 30) -> dict[str, object]:
    with connect(f"ws://127.0.0.1:{port}/ws?token={tok}", open_timeout=5, close_timeout=2) as ws:
        ws.send(json.dumps({"action": "subscribe", "stream": "best_touch", "symbol": "BTCUSDT",
                            "exchange": exchange}))
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no live best touch on {exchange}"
            m = json.loads(ws.recv(timeout=left))
            if m["type"] == "best_touch" and m["data"]["bid_px"] is not None and m["data"]["live"]:
                return dict(m["data"])


def _stop(system: Launched) -> str:
    system.proc.send_signal(signal.SIGINT)
    assert system.proc.wait(30) == 0
    out = system.output()
    assert "DIED" not in out, out[-3000:]
    return out


@pytest.mark.timeout(240)
def test_record_live_then_replay_in_its_own_account_space(tmp_path: Path) -> None:
    rec = {"SR_RECORDING__ENABLED": "true"}
    with launch(tmp_path, extra_env=rec) as live:
        live.wait_health(40)
        secret = (tmp_path / "data" / "jwt_secret").read_text().strip()
        tok = tokens.issue("replayer", secret, 600)
        auth = {"Authorization": f"Bearer {tok}"}
        _touch(live.port, tok, "all")
        r = httpx.post(f"{live.url}/deposit", json={"asset": "USDT", "amount": "1234.5"}, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        time.sleep(10)
        _stop(live)
    listing = subprocess.run([sys.executable, "-m", "recorder", "ls"], capture_output=True, text=True, cwd=ROOT,
                             timeout=60, env={**live_env(tmp_path)})
    assert listing.returncode == 0, listing.stderr
    assert "binance:" in listing.stdout and "okx:" in listing.stdout and "BTCUSDT" in listing.stdout

    # x1: the recorded ~12 s are still being replayed when the order comes (a feed goes stale 5 s after its end)
    with launch(tmp_path, argv=[*REPLAY, "--speed", "1"]) as rp:
        rp.wait_health(40)
        out = rp.output()
        assert "in the space 'replay'" in out
        touch = _touch(rp.port, tok, "binance")
        assert touch["bid_exchange"] == "binance"
        r = httpx.get(f"{rp.url}/balance", headers=auth, timeout=10)
        assert r.status_code == 200 and "1234.5" not in r.text  # the live deposit is not in the replay space
        assert httpx.post(f"{rp.url}/deposit", json={"asset": "USDT", "amount": "100000"}, headers=auth,
                          timeout=10).status_code == 200
        order = {"token_id": "replay-1", "symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "0.01"}
        r = httpx.post(f"{rp.url}/orders", json=order, headers=auth, timeout=10)
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 20
        while (st := httpx.get(f"{rp.url}/orders/replay-1", headers=auth, timeout=10).json())["status"] != "filled":
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
        rc = redis.Redis(port=_redis_port(rp))
        try:
            assert rc.hget("{u:replayer}:bal", "t:USDT") == b"1234.5"  # live: as it was
            assert rc.hget("replay:{u:replayer}:bal", "t:BTC") == b"0.01"
            assert rc.exists("replay:{u:replayer}:o:replay-1") and not rc.exists("{u:replayer}:o:replay-1")
            assert rc.exists("replay:md:last:bbo:okx:BTCUSDT")
        finally:
            rc.close()
        out = _stop(rp)
        assert "started simulator" in out


def live_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "SR_DATA_DIR": str(tmp / "data")}


@pytest.mark.captures
@pytest.mark.timeout(180)
def test_the_captures_replay_with_the_same_command(tmp_path: Path, captures_dir: Path) -> None:
    with launch(tmp_path, argv=[*REPLAY, "--replay", str(captures_dir / "hftbacktest"), "--speed", "10"]) as rp:
        rp.wait_health(40)
        secret = (tmp_path / "data" / "jwt_secret").read_text().strip()
        touch = _touch(rp.port, tokens.issue("u", secret, 600), "binance")
        assert touch["bid_exchange"] == "binance"
        _stop(rp)


def test_a_replay_with_nothing_to_replay_is_refused(tmp_path: Path) -> None:
    out = subprocess.run([*REPLAY, "--from", "2001-01-01T00:00", "--to", "2001-01-01T01:00", "--replay",
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "nothing recorded" in out.stderr
    out = subprocess.run([*REPLAY, "--from", "yesterday"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "FROM/TO" in out.stderr
