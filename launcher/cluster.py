"""`make run CLUSTER=1`: the embedded Redis Cluster the launcher starts, kept in ``<data>/cluster``.

``layout.json`` there records what was formed (masters, replicas per master, the nodes' ports, the server binary),
written once the cluster is formed. The next start brings the same nodes back on the same ports and directories:
each reads its ``nodes.conf`` and AOF back and the cluster is not formed again. The ports must stay the same: the
nodes find one another only by the addresses in their ``nodes.conf`` (a cluster restarted on new ports never comes
together). A directory the launcher cannot bring back is refused with a message saying why and what to do, never
waited on for long."""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from shared.embedded_cluster import (
    ClusterError,
    EmbeddedCluster,
    EmbeddedNode,
    NoClusterServer,
    ServerBinary,
    cluster_server_binary,
    server_version,
)
from shared.embedded_redis import port_free

LAYOUT = "layout.json"
BUS_OFFSET = 10000  # EmbeddedCluster with fixed ports: a node's cluster bus is its port + 10000
MAX_PORT = 65535 - BUS_OFFSET
PICK_RANGE = (20000, 32000)  # below Linux's ephemeral range (32768-60999), so is the bus (+10000) mostly
START_WITHIN_S = 30.0


class ClusterStartError(Exception):
    """The embedded cluster cannot be started; the text says why and what to do."""


@dataclass(frozen=True)
class Layout:
    masters: int
    replicas: int
    ports: list[int]
    server: str  # path of the server binary it was formed with

    @property
    def total(self) -> int:
        return self.masters * (1 + self.replicas)


def load_layout(base: Path) -> Layout | None:
    path = base / LAYOUT
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        layout = Layout(int(raw["masters"]), int(raw["replicas"]), [int(p) for p in raw["ports"]], str(raw["server"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ClusterStartError(f"{path} is unreadable ({e}): {_afresh(base)}") from None
    if len(layout.ports) != layout.total:
        raise ClusterStartError(f"{path} lists {len(layout.ports)} ports for {layout.total} nodes: {_afresh(base)}")
    return layout


def save_layout(base: Path, layout: Layout) -> None:
    tmp = base / (LAYOUT + ".tmp")
    tmp.write_text(json.dumps(asdict(layout), indent=1) + "\n")
    tmp.replace(base / LAYOUT)


def _afresh(base: Path) -> str:
    return (f"to form a new cluster, move {base} away (the users, balances and orders in it stay there) "
            "and start again")


def choose_ports(n: int, base_port: int = 0) -> list[int]:
    """``n`` client ports whose bus ports (+10000) are free too: ``base_port`` .. ``base_port + n - 1`` when given,
    else picked at random below the kernel's ephemeral range."""
    if base_port:
        ports = list(range(base_port, base_port + n))
        if ports[-1] > MAX_PORT:
            raise ClusterStartError(f"redis.port {base_port}: a cluster's nodes need ports up to {MAX_PORT} "
                                    f"(each node's cluster bus is its port + {BUS_OFFSET})")
        busy = [p for p in ports for q in (p, p + BUS_OFFSET) if not port_free(q)]
        if busy:
            raise ClusterStartError(f"redis.port {base_port}: port(s) {busy} (or their bus port +{BUS_OFFSET}) "
                                    "are in use; pick another redis.port (SR_REDIS__PORT) or 0 for free ones")
        return ports
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(500):
        p = rng.randrange(*PICK_RANGE)
        if p not in chosen and port_free(p) and port_free(p + BUS_OFFSET):
            chosen.append(p)
            if len(chosen) == n:
                return chosen
    raise ClusterStartError(f"found no {n} free port pairs (port and port + {BUS_OFFSET}) in {PICK_RANGE}")


def _known_ports(nodes_conf: Path) -> set[int]:
    """The client ports of every node a ``nodes.conf`` knows (``<id> <ip>:<port>@<bus>[,...] <flags> ...``)."""
    ports = set()
    for line in nodes_conf.read_text(errors="replace").splitlines():
        fields = line.split()
        if len(fields) > 2 and not line.startswith("vars "):
            m = re.match(r"^[^@]*:(\d+)@", fields[1])
            if m:
                ports.add(int(m.group(1)))
    return ports


def _check_addresses(base: Path, layout: Layout) -> None:
    """Every node must know the others at the ports of ``layout.json``: nodes that know one another at other
    addresses would never come together (a hand-edited layout, a directory copied from elsewhere)."""
    for i in range(layout.total):
        conf = base / f"node-{i}" / "nodes.conf"
        try:
            known = _known_ports(conf)
        except OSError as e:
            raise ClusterStartError(f"{conf}: {e}; {_afresh(base)}") from None
        if known and known != set(layout.ports):
            raise ClusterStartError(f"{conf} knows nodes on ports {sorted(known)}, {base / LAYOUT} lists "
                                    f"{sorted(layout.ports)}: these nodes would not find one another; {_afresh(base)}")


def _binary(layout: Layout | None) -> tuple[ServerBinary, str | None]:
    """The server to run (the one the cluster was formed with, when it is still there) and a warning, if any."""
    if layout is not None:
        try:
            product, version = server_version(layout.server)
            return ServerBinary(layout.server, product, version, LAYOUT), None
        except (OSError, ValueError) as e:
            warning = (f"the server this cluster was formed with ({layout.server}) does not run ({e}); using another "
                       "one: its data files may not load")
        try:
            return cluster_server_binary(), warning
        except NoClusterServer as e:
            raise ClusterStartError(str(e)) from None
    try:
        return cluster_server_binary(), None
    except NoClusterServer as e:
        raise ClusterStartError(str(e)) from None


def start(base: Path, *, masters: int = 3, replicas: int = 0, base_port: int = 0, appendfsync: str = "always",
          within: float = START_WITHIN_S) -> tuple[EmbeddedCluster, bool, list[str]]:
    """Start (bring back, or form) the cluster kept in ``base``: ``(cluster, reused, warnings)``.

    Call it from the thread that lives as long as the cluster (the nodes die with that thread, PR_SET_PDEATHSIG).
    Raises :class:`ClusterStartError` with the reason and the way out."""
    base.mkdir(parents=True, exist_ok=True)
    layout = load_layout(base)
    warnings: list[str] = []
    confs = sorted(base.glob("node-*/nodes.conf"))
    if layout is None and confs:
        raise ClusterStartError(f"{base} holds cluster nodes ({', '.join(str(c.parent.name) for c in confs)}) but no "
                                f"{LAYOUT}: not formed by this launcher, or its first start was interrupted; "
                                + _afresh(base))
    if layout is not None:
        if (layout.masters, layout.replicas) != (masters, replicas):
            raise ClusterStartError(
                f"{base} holds a cluster of {layout.masters} masters with {layout.replicas} replica(s) each; this "
                f"start asks for {masters} with {replicas}: start it as it was formed (--cluster-replicas "
                f"{layout.replicas}), or {_afresh(base)}")
        missing = [f"node-{i}" for i in range(layout.total) if not (base / f"node-{i}" / "nodes.conf").exists()]
        if missing and len(missing) < layout.total:
            raise ClusterStartError(f"{base}: {', '.join(missing)} lost their nodes.conf, the other nodes still "
                                    "know them: the cluster cannot be brought back as it was; " + _afresh(base))
        if not missing:
            _check_addresses(base, layout)
        if base_port and layout.ports[0] != base_port:
            warnings.append(f"redis.port {base_port} ignored: the cluster in {base} lives on ports {layout.ports}")
        busy = [p for p in layout.ports for q in (p, p + BUS_OFFSET) if not port_free(q)]
        if busy:
            raise ClusterStartError(
                f"the cluster in {base} lives on ports {layout.ports} (cluster bus: +{BUS_OFFSET}) and port(s) "
                f"{busy} are in use by another process: stop it (data/pids.json names ours), or {_afresh(base)}")
        reused = not missing
        ports = layout.ports
    else:
        reused = False
        ports = choose_ports(masters * (1 + replicas), base_port)
    binary, warning = _binary(layout)
    if warning:
        warnings.append(warning)
    cluster = EmbeddedCluster(masters, replicas, base_dir=base, ports=ports, appendfsync=appendfsync, binary=binary)
    logs = [base / f"node-{i}" / "server.log" for i in range(len(ports))]
    offsets = [log.stat().st_size if log.exists() else 0 for log in logs]  # the servers append to their logs
    try:
        cluster.start(within)
    except (ClusterError, redis.RedisError, OSError) as e:
        why = _why(e, logs, offsets, ports)
        if not reused:  # a fresh formation that failed: nothing worth keeping, leave the directory clean
            for n in cluster.nodes:
                shutil.rmtree(n.dir, ignore_errors=True)
            raise ClusterStartError(f"could not form a cluster in {base}: {why}") from None
        raise ClusterStartError(f"the cluster in {base} could not be brought back (within {within:.0f}s): {why}\n"
                                f"its nodes' logs: {', '.join(map(str, logs))}\n{_afresh(base)}") from None
    if layout is None or not reused:
        save_layout(base, Layout(masters, replicas, list(ports), binary.path))
    return cluster, reused, warnings


_PROBLEM = re.compile(r"error|fatal|can't|could not|failed|bad |corrupt", re.IGNORECASE)
_LOG_PREFIX = re.compile(r"^\d+:[A-Z] .*?\d\d:\d\d:\d\d\.\d+ [#*.-] ")


def _why(e: Exception, logs: list[Path], offsets: list[int], ports: list[int]) -> str:
    """What went wrong, in a line or a few: the first complaint each node logged during this start (a corrupt
    nodes.conf, an unreadable AOF, a port taken), else the error's first line."""
    found = []
    for i, (log, offset) in enumerate(zip(logs, offsets, strict=True)):
        try:
            with log.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            msg = _LOG_PREFIX.sub("", line).strip()
            if _PROBLEM.search(msg) and not msg.startswith("WARNING"):
                found.append(f"node-{i} (port {ports[i]}): {msg[:300]}")
                break
    return "; ".join(found) if found else str(e).splitlines()[0][:500]


def describe(cluster: EmbeddedCluster, node: EmbeddedNode) -> str:
    """``master 127.0.0.1:7000 (pid 123)``, with the role the node reports now (a failover changes it)."""
    role = cluster.live_role(node)
    role = {"slave": "replica"}.get(role, role)
    return f"{role:<7} {node.host}:{node.port} (pid {node.pid})"
