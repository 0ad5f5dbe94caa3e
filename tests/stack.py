"""A whole system of real processes for fault-injection tests, supervised by the real launcher.

    async with Stack(tmp_path, ingestors=True) as st:     # redis-server (AOF, appendfsync always) + the
        st.url, st.redis_url, st.headers("alice")          # launcher's matcher and gateway (+ both ingestors
        old = st.kill9("matcher")                          # on an in-process simulator, ``st.sim``)
        await st.wait_restarted("matcher", old)
        st.kill9("redis"); await st.wait_redis_back()

The launcher (``launcher.main.Launcher``) runs in the test's event loop, so every child is a real subprocess it
restarts when it dies, and it restarts the embedded redis-server on the same port and data directory. Processes
are found by pid (``st.pid(name)``), never by name; everything stops in ``__aexit__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import redis.asyncio as aioredis

from launcher.main import Launcher, Proc
from shared import names, tokens
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.settings import Settings, load_settings
from simulator import Simulator
from tests.mdfeed import MdFeed
from tests.servers import TEST_LIMITS

SECRET = "fault-secret-" + "x" * 40


async def wait_for(pred: Callable[[], Awaitable[bool]], within: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(Exception):
            if await pred():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


class Stack:
    def __init__(self, tmp: Path, *, ingestors: bool = False, stale_after_s: float = 5.0,
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.ingestors = ingestors
        self.port = free_port()
        self.redis = EmbeddedRedis(tmp / "redis", appendfsync="always")
        self.sim: Simulator | None = None
        self.extra_env = {"SR_FEEDS__STALE_AFTER_S": str(stale_after_s), **TEST_LIMITS, **(env or {})}
        self.launcher: Launcher | None = None
        self._task: asyncio.Task[int] | None = None
        self.settings: Settings = load_settings(env={"JWT_SECRET": SECRET, **self.extra_env})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def token(self, user: str) -> str:
        return tokens.issue(user, SECRET, 3600)

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token(user)}

    async def __aenter__(self) -> Stack:
        await asyncio.to_thread(self.redis.start)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SR_")}
        env.update(REDIS_URL=self.redis.url, JWT_SECRET=SECRET, PORT=str(self.port), PYTHONUNBUFFERED="1",
                   LOG_LEVEL="WARNING", SR_AUTH__BCRYPT_ROUNDS="4", SR_METRICS__MATCHER_PORT="0",
                   SR_METRICS__INGESTOR_BINANCE_PORT="0", SR_METRICS__INGESTOR_OKX_PORT="0", **self.extra_env)
        py = sys.executable
        argvs = [("matcher", [py, "-m", "matcher"]), ("gateway", [py, "-m", "gateway"])]
        if self.ingestors:
            self.sim = await Simulator(settings=self.settings, seed=7).start()
            env.update(BINANCE_WS_URL=self.sim.binance_url, OKX_WS_URL=self.sim.okx_url)
            argvs += [("ingestor-binance", [py, "-m", "ingestor", "binance"]),
                      ("ingestor-okx", [py, "-m", "ingestor", "okx"])]
        self.launcher = Launcher([Proc(n, a, "") for n, a in argvs], env, redis=self.redis,
                                 pids_file=self.tmp / "pids.json", restart_limit=1000, restart_delay_s=0.2)
        self._task = asyncio.create_task(self.launcher.run(handle_signals=False))
        try:
            await self.wait_healthy(60)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self.launcher and self._task:
                self.launcher.stopping.set()
                try:
                    await asyncio.wait_for(self._task, 30)
                except TimeoutError:
                    for p in self.launcher.procs:  # our own children, by pid
                        if p.proc and p.proc.returncode is None:
                            p.proc.kill()
        finally:
            if self.sim:
                await self.sim.stop()
            await asyncio.to_thread(self.redis.stop)

    # --- processes -------------------------------------------------------------------------------

    def pid(self, name: str) -> int:
        if name == "redis":
            assert self.redis.proc is not None
            return self.redis.proc.pid
        assert self.launcher is not None
        for p in self.launcher.procs:
            if p.name == name and p.proc is not None and p.proc.returncode is None:
                return p.proc.pid
        raise LookupError(f"{name} is not running")

    def kill9(self, name: str) -> int:
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    async def wait_restarted(self, name: str, old_pid: int, within: float = 30) -> int:
        async def new() -> bool:
            return self.pid(name) != old_pid
        await wait_for(new, within, f"{name} to be restarted")
        return self.pid(name)

    @contextlib.contextmanager
    def stopped(self, name: str) -> Any:
        """SIGSTOP the process for the block; SIGCONT always."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGSTOP)
        try:
            yield pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def wait_healthy(self, within: float = 30) -> None:
        """The gateway answers a Redis-backed route and the matcher heartbeats."""
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as c:
            async def ok() -> bool:
                if (await c.get("/balance", headers=self.headers("probe"))).status_code != 200:
                    return False
                r = aioredis.Redis.from_url(self.redis_url)
                try:
                    return bool(await r.exists(names.MATCHER_ALIVE_KEY))
                finally:
                    await r.aclose()
            await wait_for(ok, within, "gateway and matcher to be up", every=0.1)

    async def wait_redis_back(self, old_pid: int, within: float = 30) -> None:
        async def back() -> bool:
            return self.redis.proc is not None and self.redis.proc.pid != old_pid and self.redis._ping()
        await wait_for(back, within, "redis-server to be restarted")


@contextlib.asynccontextmanager
async def feed_heartbeats(redis_url: str, *exchanges: str, every_s: float = 0.5) -> AsyncIterator[set[str]]:
    """Announce the exchanges as ``up`` (as their ingestors would), surviving Redis restarts; remove one from the
    yielded set to stop announcing it."""
    r = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    try:
        async with MdFeed(r).heartbeats(*exchanges, every_s=every_s) as alive:
            yield alive
    finally:
        await r.aclose()
