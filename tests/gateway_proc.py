"""``python -m gateway`` as a real child process (one worker), for tests that measure its memory or pause clients.

``with gateway_process(redis_url, SR_WS__QUEUE_MAX="500") as gw:`` starts it on a free loopback port and waits
for ``/health``; ``gw.url``, ``gw.rss_kb()`` (VmRSS from ``/proc``), ``gw.metric(name, **labels)`` (a
``/metrics`` sample), ``gw.peer_ports()`` (remote ports of its established TCP connections). Stopped with
SIGTERM at the end (SIGKILL to its process group if it hangs); its stderr goes to ``gw.log``.
"""

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

import httpx

from shared.embedded_redis import free_port
from shared.settings import ROOT
from tests.servers import CLUSTER_PASS, TEST_LIMITS
from tests.wsclient import SECRET


@dataclass
class GatewayProc:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``/metrics`` samples named ``name`` whose labels include ``labels``; 0 when absent."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, lab = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in lab for k, v in labels.items()):
                total += float(value)
        return total

    def peer_ports(self) -> set[int]:
        """Remote ports of the gateway's TCP connections that are not closed yet (any state but LISTEN)."""
        inodes = set()
        fd_dir = Path(f"/proc/{self.pid}/fd")
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        ports = set()
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]:
                    f = line.split()
                    if f[9] in inodes and f[3] != "0A":  # 0A = LISTEN
                        ports.add(int(f[2].rsplit(":", 1)[1], 16))
        return ports

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def gateway_process(redis_url: str, tmp: Path, **env: str) -> Iterator[GatewayProc]:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR",)}
    full.update(REDIS_URL=redis_url, PORT=str(port), JWT_SECRET=SECRET, SR_AUTH__BCRYPT_ROUNDS="4",
                SR_GATEWAY__WORKERS="1", SR_GATEWAY__HOST="127.0.0.1", LOG_LEVEL="WARNING", **TEST_LIMITS)
    if CLUSTER_PASS:
        full["REDIS_CLUSTER"] = "1"
    full.update(env)
    log = tmp / f"gateway-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=full, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    gw = GatewayProc(proc, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"gateway exited: {log.read_text()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{gw.url}/health", timeout=1).status_code < 500:
                    break
            assert time.monotonic() < deadline, "gateway never answered /health"
            time.sleep(0.1)
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
