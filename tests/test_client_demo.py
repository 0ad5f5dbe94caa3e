"""`make run FEED=sim` then `make demo`, end to end: the launcher with the simulator, the demo as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.embedded_redis import free_port
from shared.settings import ROOT
from tests.launcher_helpers import launch


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole system with the simulator (module-wide: the demo and the CLI tests share it)."""
    with launch(tmp_path_factory.mktemp("system")) as sysproc:
        sysproc.wait_health(60)
        yield sysproc.url


def run_module(args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(240)
def test_demo_end_to_end(system: str, tmp_path: Path) -> None:
    r = run_module(["client.demo", "--url", system, "--timeout", "100", "--strict"])
    out = r.stdout
    (tmp_path / "demo.out").write_text(out + r.stderr)
    assert r.returncode == 0, out[-4000:] + r.stderr[-2000:]
    assert "DEMO OK" in out and "0 failed" in out
    for line in ("[ok] registration and login (REST)", "[ok] deposit (REST)",
                 "[ok] a fill: marketable limit order (REST)", "[ok] market and IOC orders (REST)",
                 "[ok] limit order, status, modify, cancel (REST)", "[ok] order status, fills and balances (REST)"):
        assert line in out, out[-4000:]
    for ex in ("all", "binance", "okx"):
        for topic in (f"best_touch:BTCUSDT:{ex}", f"trades:BTCUSDT:{ex}", f"ewma:BTCUSDT:{ex}:10",
                      *(f"klines:BTCUSDT:{ex}:{iv}" for iv in ("1s", "10s", "1m", "5m"))):
            assert f"  {topic}" in out, topic
    assert "-> filled" in out and "-> expired" in out and "-> cancelled" in out
    assert "[ok] orders over WebSocket" in out and "[skip]" not in out


def test_demo_fails_against_nothing() -> None:
    r = run_module(["client.demo", "--url", f"http://127.0.0.1:{free_port()}", "--wait", "0.5"], timeout=60)
    assert r.returncode == 1
    assert "does not answer" in r.stdout


def test_cli_watch_orders_and_balance(system: str) -> None:
    creds = {"SR_USER": "cli_user", "SR_PASSWORD": "cli password 1"}
    r = run_module(["client", "watch", "best_touch", "BTCUSDT", "ETHUSDT", "--exchange", "all", "--url", system,
                    "--register", "--count", "4", "--seconds", "60"], **creds)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count("(update ") == 4
    assert "bid" in r.stdout and "ask" in r.stdout and "BTCUSDT" in r.stdout

    r = run_module(["client", "watch", "trades", "ETHUSDT", "--exchange", "okx", "--url", system, "--count", "3",
                    "--seconds", "60"], **creds)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count("(update 3,") == 1 and "okx" in r.stdout

    r = run_module(["client", "watch", "klines", "BTCUSDT", "--interval", "1s", "--url", system, "--count", "2"],
                   **creds)
    assert r.returncode == 0 and "1s" in r.stdout, r.stderr[-2000:]

    r = run_module(["client", "balance", "--url", system, "--count", "2", "--every", "0.1"], **creds)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "USDT" in r.stdout and "available" in r.stdout and r.stdout.count("(update ") == 2

    r = run_module(["client", "orders", "--url", system, "--count", "1"], **creds)
    assert r.returncode == 0 and "0 of 0 orders" in r.stdout, r.stdout + r.stderr

    r = run_module(["client", "balance", "--url", system, "--count", "1"], SR_USER="cli_user", SR_PASSWORD="wrong pw 1")
    assert r.returncode == 1 and "invalid_credentials" in r.stderr

    r = run_module(["client", "watch", "best_touch", "NOPE", "--url", system, "--count", "1"], **creds)
    assert r.returncode == 1 and "unknown_symbol" in r.stderr
