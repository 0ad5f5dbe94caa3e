"""``redis.cluster`` that does not match the server is refused at start with a message saying what to set, by every
process, rather than surfacing later as MOVED errors or closed WebSockets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.embedded_cluster import EmbeddedCluster
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.settings import ROOT


def run(module: list[str], redis_url: str, cluster: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SR_") and k not in ("REDIS_URL", "REDIS_CLUSTER")}
    env.update(REDIS_URL=redis_url, REDIS_CLUSTER="1" if cluster else "0", JWT_SECRET="s" * 40, PORT=str(free_port()),
               SR_METRICS__MATCHER_PORT="0", SR_METRICS__INGESTOR_BINANCE_PORT="0", BINANCE_WS_URL="ws://127.0.0.1:1")
    return subprocess.run([sys.executable, "-m", *module], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("module", [["matcher"], ["ingestor", "binance"], ["gateway"]])
def test_cluster_mode_on_a_single_server_is_refused(module: list[str], redis_server: EmbeddedRedis) -> None:
    done = run(module, redis_server.url, cluster=True)
    assert done.returncode != 0
    assert "is not a cluster node" in done.stderr + done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("module", [["matcher"], ["ingestor", "binance"], ["gateway"]])
def test_single_mode_on_a_cluster_node_is_refused(module: list[str], redis_cluster: EmbeddedCluster) -> None:
    done = run(module, redis_cluster.seed_url, cluster=False)
    assert done.returncode != 0
    assert "set REDIS_CLUSTER=1" in done.stderr + done.stdout, done.stderr[-3000:]
