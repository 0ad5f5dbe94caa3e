"""A small supervisor: starts the processes, prefixes their output, reports a death loudly and restarts it,
stops everything on Ctrl-C / SIGTERM. The embedded redis-server is supervised too: restarted on the same port and
data directory (its AOF) when it dies. Every (re)start rewrites ``<data>/pids.json`` (name -> pid). One launcher
per data directory: it holds ``<data>/launcher.lock`` all its life; a second one refuses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from launcher import lock
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.lifeline import die_with_parent
from shared.settings import ROOT, SettingsError, load_settings

DATA = Path(os.environ.get("SR_DATA_DIR") or ROOT / "data")
RESTART_LIMIT = 5  # restarts per process within RESTART_WINDOW_S before the launcher gives up
RESTART_WINDOW_S = 60.0
COLORS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"


def say(msg: str) -> None:
    print(f"launcher | {msg}", flush=True)


@dataclass
class Proc:
    name: str
    argv: list[str]
    color: str
    proc: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)


def jwt_secret() -> str:
    path = DATA / "jwt_secret"
    if path.exists() and len(path.read_text().strip()) >= 32:
        return path.read_text().strip()
    DATA.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    path.write_text(value)
    path.chmod(0o600)
    return value


class Launcher:
    def __init__(self, procs: list[Proc], env: dict[str, str], *, redis: EmbeddedRedis | None = None,
                 pids_file: Path | None = None, restart_limit: int = RESTART_LIMIT,
                 restart_delay_s: float = 1.0) -> None:
        self.procs = procs
        self.env = env
        self.redis = redis
        self.pids_file = pids_file
        self.restart_limit = restart_limit
        self.restart_delay_s = restart_delay_s
        self.stopping = asyncio.Event()
        self.failed = False
        self.redis_restarts = 0

    def pids(self) -> dict[str, int]:
        out = {p.name: p.proc.pid for p in self.procs if p.proc and p.proc.returncode is None}
        if self.redis and self.redis.proc and self.redis.proc.poll() is None:
            out["redis"] = self.redis.proc.pid
        return out

    def _write_pids(self) -> None:
        if self.pids_file is None:
            return
        tmp = self.pids_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.pids(), sort_keys=True))
        tmp.replace(self.pids_file)

    async def _watch_redis(self) -> None:
        """Restart the embedded redis-server on its port and data directory when it dies (kill -9, OOM):
        AOF brings the data back; every process reconnects by itself."""
        srv = self.redis
        assert srv is not None
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.2)
            if self.stopping.is_set() or srv.proc is None or srv.proc.poll() is None:
                continue
            banner = "!" * 72
            say(f"\n{banner}\n!!! redis-server DIED with exit code {srv.proc.returncode}\n{banner}")
            while not self.stopping.is_set():
                try:
                    await asyncio.to_thread(srv.start)
                except RuntimeError as e:  # e.g. the port not yet released: try again
                    say(f"redis-server restart failed: {e}")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), 1.0)
                    continue
                self.redis_restarts += 1
                say(f"restarted redis-server on {srv.url} (pid {srv.proc.pid if srv.proc else '?'})")
                self._write_pids()
                break

    async def _pump(self, p: Proc) -> None:
        assert p.proc and p.proc.stdout
        tty = sys.stdout.isatty()
        prefix = f"{p.color}{p.name:>16} |{RESET} " if tty else f"{p.name:>16} | "
        async for line in p.proc.stdout:
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()

    async def _run_one(self, p: Proc) -> None:
        while not self.stopping.is_set():
            p.proc = await asyncio.create_subprocess_exec(
                *p.argv, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
                # A launcher killed outright takes its processes along (SIGTERM: they stop cleanly), so a restart
                # never finds a second matcher or gateway still running.
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
            say(f"started {p.name} (pid {p.proc.pid}): {' '.join(p.argv[1:])}")
            self._write_pids()
            pump = asyncio.create_task(self._pump(p))
            rc = await p.proc.wait()
            await asyncio.wait([pump], timeout=2)
            if self.stopping.is_set():
                return
            now = time.monotonic()
            p.restarts = [t for t in p.restarts if now - t < RESTART_WINDOW_S] + [now]
            banner = "!" * 72
            say(f"\n{banner}\n!!! {p.name} DIED with exit code {rc}\n{banner}")
            if len(p.restarts) > self.restart_limit:
                say(f"{p.name} died {len(p.restarts)} times in {RESTART_WINDOW_S:.0f}s: stopping everything")
                self.failed = True
                self.stopping.set()
                return
            await asyncio.sleep(self.restart_delay_s)
            say(f"restarting {p.name}")

    async def _terminate(self) -> None:
        for p in self.procs:
            if p.proc and p.proc.returncode is None:
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            if p.proc and p.proc.returncode is None:
                try:
                    await asyncio.wait_for(p.proc.wait(), max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    say(f"{p.name} ignored SIGTERM: killing it")
                    p.proc.kill()
                    await p.proc.wait()

    async def run(self, *, handle_signals: bool = True) -> int:
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stopping.set)
        runners = [asyncio.create_task(self._run_one(p)) for p in self.procs]
        if self.redis is not None:
            runners.append(asyncio.create_task(self._watch_redis()))
        await self.stopping.wait()
        say("stopping all processes")
        await self._terminate()
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        say("all processes stopped")
        return 1 if self.failed else 0


def build(feed: str, env: dict[str, str]) -> list[Proc]:
    py = sys.executable
    procs: list[tuple[str, list[str]]] = []
    if feed == "sim":
        bport, oport = free_port(), free_port()
        env["BINANCE_WS_URL"] = f"ws://127.0.0.1:{bport}"
        env["OKX_WS_URL"] = f"ws://127.0.0.1:{oport}/ws/v5/public"
        procs.append(("simulator", [py, "-m", "simulator", "--binance-port", str(bport), "--okx-port", str(oport)]))
    procs += [
        ("ingestor-binance", [py, "-m", "ingestor", "binance"]),
        ("ingestor-okx", [py, "-m", "ingestor", "okx"]),
        ("matcher", [py, "-m", "matcher"]),
        ("gateway", [py, "-m", "gateway"]),
    ]
    return [Proc(n, a, COLORS[i % len(COLORS)]) for i, (n, a) in enumerate(procs)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher", description="Start Simple Router (every process).")
    ap.add_argument("--feed", choices=["live", "sim"], default=os.environ.get("FEED", "live") or "live")
    args = ap.parse_args(argv)
    try:
        with lock.hold(DATA):  # held for the launcher's whole life: nothing starts without it
            return run(args.feed)
    except lock.AlreadyRunning as e:
        print(f"launcher: {e}", file=sys.stderr, flush=True)
        return 3


def run(feed: str) -> int:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    try:
        settings = load_settings(env=env)
    except SettingsError as e:
        say(str(e))
        return 2
    redis_srv: EmbeddedRedis | None = None
    if not settings.redis.url:
        redis_srv = EmbeddedRedis(DATA / "redis", port=settings.redis.port, appendfsync=settings.redis.appendfsync)
        redis_srv.start()
        env["REDIS_URL"] = redis_srv.url
        say(f"embedded redis-server on {redis_srv.url} (AOF in {redis_srv.data_dir}); inspect with: "
            f"redis-cli -p {redis_srv.port}")
    else:
        say(f"using Redis at {settings.redis.url}")
    if not settings.auth.jwt_secret:
        env["JWT_SECRET"] = jwt_secret()
    procs = build(feed, env)
    say(f"feed={feed}; REST and WebSocket on http://{settings.gateway.host}:{settings.gateway.port} "
        f"(docs at /docs)")
    try:
        return asyncio.run(Launcher(procs, env, redis=redis_srv, pids_file=DATA / "pids.json").run())
    finally:
        if redis_srv:
            redis_srv.stop()
            say("redis-server stopped")
