"""`make run FEED=sim` end to end: the launcher starts Redis and every process, and Ctrl-C stops them all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from websockets.sync.client import connect

from shared import tokens
from shared.embedded_redis import free_port
from shared.settings import ROOT
from tests.launcher_helpers import LAUNCHER, Launched, launch, launcher_env


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


@pytest.mark.timeout(180)
def test_a_second_launcher_on_the_same_data_dir_refuses_and_the_first_carries_on(launched: Launched,
                                                                                  tmp_path: Path) -> None:
    launched.wait_health(60)
    before = _pids(tmp_path)
    t0 = time.monotonic()
    second = subprocess.run(LAUNCHER, cwd=ROOT, env=launcher_env(tmp_path, free_port()), capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=30, start_new_session=True)
    assert time.monotonic() - t0 < 15, "the second launcher took its time to refuse"
    assert second.returncode == 3, second
    data = (tmp_path / "data").resolve()
    assert second.stderr.decode() == (f"launcher: another launcher (pid {launched.proc.pid}) is running on data "
                                      f"directory {data}; stop it first\n")
    assert second.stdout == b"", "the second launcher started something before refusing"
    assert _pids(tmp_path) == before  # no second redis-server, no second matcher
    assert launched.proc.poll() is None
    assert httpx.get(f"{launched.url}/health", timeout=5).status_code == 200
    launched.log.seek(0)
    assert b"DIED" not in launched.log.read()


@pytest.mark.timeout(240)
def test_a_kill_9d_launcher_leaves_no_stale_lock(tmp_path: Path) -> None:
    with launch(tmp_path) as first:
        first.wait_health(60)
        children = _pids(tmp_path)
        os.kill(first.proc.pid, signal.SIGKILL)
        assert first.proc.wait(10) == -signal.SIGKILL
        # Its processes die with it (PR_SET_PDEATHSIG): no second matcher or gateway is left behind.
        left = [name for name, pid in children.items() if name != "redis" and not _gone(pid, 15)]
        _kill_orphans(first.proc.pid, children)
        assert not left, f"still running after the launcher was killed: {left}"
    with launch(tmp_path) as again:
        again.wait_health(60)
        assert (tmp_path / "data" / "launcher.lock").read_text() == f"{again.proc.pid}\n"
        again.proc.send_signal(signal.SIGINT)
        assert again.proc.wait(30) == 0
    assert (tmp_path / "data" / "launcher.lock").read_text() == ""  # released on a clean exit


def _pids(tmp: Path) -> dict[str, int]:
    pids: dict[str, int] = json.loads((tmp / "data" / "pids.json").read_text())
    return pids


def _gone(pid: int, within: float) -> bool:
    """The process exited (a zombie nobody reaped yet counts as gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat[stat.rindex(")") + 2] == "Z":
            return True
        time.sleep(0.05)
    return False


def _kill_orphans(launcher_pid: int, children: dict[str, int], within: float = 15) -> None:
    """What a kill -9 of the launcher leaves behind, all started by this test: redis-server in the launcher's own
    process group, every other child in a session (and group) of its own, with its workers."""
    groups = {launcher_pid} | {pid for name, pid in children.items() if name != "redis"}
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + within
    for pid in children.values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


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
