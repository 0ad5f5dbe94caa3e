"""The whole system as `make run FEED=sim` starts it: the launcher in a subprocess of its own session."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from shared.embedded_redis import free_port
from shared.settings import ROOT


@dataclass
class Launched:
    proc: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]  # the launcher's stdout and stderr

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_health(self, timeout: float = 60, port: int | None = None) -> None:
        """Wait for ``GET /health`` on the gateway at ``port`` (the first gateway's by default)."""
        url = f"http://127.0.0.1:{port or self.port}"
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "launcher exited early"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"gateway {url} never became healthy"
            time.sleep(0.2)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


LAUNCHER = [sys.executable, "-m", "launcher", "--feed", "sim"]


def launcher_env(tmp: Path, port: int) -> dict[str, str]:
    """The environment of a launcher with its data in ``tmp / "data"`` and its gateway on ``port``."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JWT_SECRET")}
    env.update(SR_DATA_DIR=str(tmp / "data"), PORT=str(port), SR_AUTH__BCRYPT_ROUNDS="4")
    return env


@contextlib.contextmanager
def launch(tmp: Path, argv: list[str] | None = None, port: int | None = None, log_name: str = "launcher.log",
           extra_env: dict[str, str] | None = None) -> Iterator[Launched]:
    """Start ``python -m launcher --feed sim`` (or ``argv``) with its data in ``tmp``; on exit, Ctrl-C it (SIGKILL
    after 30 s)."""
    port = port or free_port()
    env = launcher_env(tmp, port) | (extra_env or {})
    with open(tmp / log_name, "w+b") as log:
        proc = subprocess.Popen(argv or LAUNCHER, cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield Launched(proc, port, log)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
