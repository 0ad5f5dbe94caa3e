"""`make run FEED=sim` end to end: the launcher starts Redis and every process, and Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.embedded_redis import free_port
from shared.settings import ROOT


@pytest.fixture
def launched(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JWT_SECRET")}
    env.update(SR_DATA_DIR=str(tmp_path / "data"), PORT=str(port), SR_AUTH__BCRYPT_ROUNDS="4")
    log = open(tmp_path / "launcher.log", "w+b")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "--feed", "sim"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, port, tmp_path, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def _wait_health(proc: subprocess.Popen[bytes], port: int, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "launcher exited early"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("gateway never became healthy")


def test_run_sim_starts_everything_and_ctrl_c_stops_it(launched) -> None:  # type: ignore[no-untyped-def]
    proc, port, tmp, log = launched
    _wait_health(proc, port)
    assert (tmp / "data" / "jwt_secret").exists()
    assert (tmp / "data" / "redis" / "redis.log").exists()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    log.seek(0)
    out = log.read().decode(errors="replace")
    for name in ("simulator", "ingestor-binance", "ingestor-okx", "matcher", "gateway"):
        assert f"started {name}" in out, out[-3000:]
    assert "all processes stopped" in out and "redis-server stopped" in out
    assert "DIED" not in out, out[-3000:]
