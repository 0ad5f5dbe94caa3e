"""One gateway against two on a Redis Cluster, in one run: ``python -m bench.cluster_gateways [--clients 64]
[--seconds 8] [--masters 3]``.

An embedded cluster (``--masters`` masters, no replicas, AOF ``always``), one matcher process, and two gateway
processes (one uvicorn worker each). Phase 1: ``--clients`` keep-alive HTTP clients POST resting limit orders to the
first gateway only (closed loop, one user per client). Phase 2: the same number of clients (new users) split
evenly over both gateways. Each phase prints accepted orders/s, latency, CPU per accepted order of the gateways,
the Redis nodes and the matcher (from ``/proc``), and Redis commands per order (``INFO commandstats`` on every
master); the last line is the ratio of phase 2's throughput to phase 1's. The load generator runs on the same
machine: on 2 cores, a second gateway competes with it and with Redis, so the ratio is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.orders import SECRET, Http, closed_loop, cpu_s, pct, spawn, stop_procs, wait_port
from shared import tokens
from shared.embedded_cluster import EmbeddedCluster
from shared.embedded_redis import free_port


@dataclass
class Phase:
    gateways: int
    accepted: int
    seconds: float
    p50: float
    p99: float
    cpu: dict[str, float]
    redis_cmds: int

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds

    def line(self) -> str:
        per = ", ".join(f"{k} {v / max(1, self.accepted) * 1e6:,.0f} µs" for k, v in self.cpu.items())
        return (f"{self.gateways} gateway(s): {self.accepted} accepted in {self.seconds:.1f} s = {self.rate:,.0f} "
                f"orders/s; latency p50 {self.p50:.1f} ms, p99 {self.p99:.1f} ms\n"
                f"  CPU per accepted order: {per}; Redis commands per order "
                f"{self.redis_cmds / max(1, self.accepted):.1f}")


def command_calls(cluster: EmbeddedCluster) -> int:
    total = 0
    for node in cluster.masters:
        with node.client() as c:
            stats = c.info("commandstats")
            total += sum(int(v["calls"]) for k, v in stats.items() if isinstance(v, dict) and "calls" in v)
    return total


async def funded(ports: list[int], prefix: str, n: int) -> tuple[list[str], list[Http]]:
    toks = [tokens.issue(f"{prefix}{i}", SECRET, 3600) for i in range(n)]
    conns = [Http(ports[i % len(ports)]) for i in range(n)]
    for c, t in zip(conns, toks, strict=True):
        st, body = await c.request("POST", "/deposit", t, b'{"asset":"USDT","amount":1000000000}')
        assert st == 200, body
    return toks, conns


async def phase(cluster: EmbeddedCluster, ports: list[int], pids: dict[str, list[int]], clients: int,
                seconds: float, prefix: str) -> Phase:
    toks, conns = await funded(ports, prefix, clients)
    cmds0 = command_calls(cluster)
    cpu0 = {k: cpu_s(v) for k, v in pids.items()}
    accepted, _, lat, elapsed = await closed_loop(conns, toks, seconds)
    cpu = {k: cpu_s(v) - cpu0[k] for k, v in pids.items()}
    cmds = command_calls(cluster) - cmds0
    for c in conns:
        await c.close()
    return Phase(len(ports), accepted, elapsed, pct(lat, 50), pct(lat, 99), cpu, cmds)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--masters", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = EmbeddedCluster(args.masters, 0, base_dir=Path(tmp))
        await cluster.astart()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            base = {**os.environ, "REDIS_URL": cluster.seed_url, "REDIS_CLUSTER": "1", "JWT_SECRET": SECRET,
                    "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"), "SR_GATEWAY__WORKERS": "1",
                    "SR_METRICS__MATCHER_PORT": "0"}
            ports = [free_port(), free_port()]
            gateways = [spawn("gateway", {**base, "PORT": str(p)}) for p in ports]
            matcher = spawn("matcher", base)
            procs = [*gateways, matcher]
            for p in ports:
                await wait_port(p)
            await asyncio.sleep(1.0)
            nodes = [n.pid for n in cluster.masters if n.pid is not None]
            one = await phase(cluster, ports[:1], {"gateway": [gateways[0].pid], "redis": nodes,
                                                    "matcher": [matcher.pid]}, args.clients, args.seconds, "one")
            print(one.line())
            two = await phase(cluster, ports, {"gateway": [g.pid for g in gateways], "redis": nodes,
                                               "matcher": [matcher.pid]}, args.clients, args.seconds, "two")
            print(two.line())
            print(f"RESULT 2 gateways / 1 gateway: {two.rate / one.rate:.2f}x accepted orders/s "
                  f"({os.cpu_count()} cores for the gateways, {args.masters} Redis masters, the matcher and the load)")
        finally:
            stop_procs(procs)
            cluster.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
