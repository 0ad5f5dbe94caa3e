"""`make run FEED=sim` end to end: the launcher starts Redis and every process, and Ctrl-C stops them all; and
`make run CLUSTER=1 FEED=sim`, the same system on an embedded Redis Cluster."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from websockets.sync.client import connect

from shared import tokens
from shared.embedded_cluster import EmbeddedCluster, NoClusterServer, cluster_server_binary
from shared.embedded_redis import free_port, port_free
from shared.settings import ROOT
from tests.launcher_helpers import LAUNCHER, Launched, launch, launcher_env


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Launched]:
    with launch(tmp_path) as system:
        yield system


def test_run_sim_starts_everything_and_ctrl_c_stops_it(launched: Launched, tmp_path: Path) -> None:
    proc, port, log, tmp = launched.proc, launched.port, launched.log, tmp_path
    launched.wait_health(40)
    assert (tmp / "data" / "jwt_secret").exists()
    assert (tmp / "data" / "redis" / "redis.log").exists()
    log.seek(0)
    m = re.search(rb"redis-cli -p (\d+)", log.read())
    assert m, "the launcher did not print how to inspect Redis"
    _market_data_flows(int(m.group(1)))
    _gateway_best_touch(port, (tmp / "data" / "jwt_secret").read_text().strip())
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    log.seek(0)
    out = log.read().decode(errors="replace")
    for name in ("simulator", "ingestor-binance", "ingestor-okx", "matcher", "gateway"):
        assert f"started {name}" in out, out[-3000:]
    assert "all processes stopped" in out and "redis-server stopped" in out
    assert "DIED" not in out, out[-3000:]


@pytest.mark.timeout(180)
def test_a_second_launcher_on_the_same_data_dir_refuses_and_the_first_carries_on(launched: Launched,
                                                                                  tmp_path: Path) -> None:
    launched.wait_health(60)
    before = _pids(tmp_path)
    t0 = time.monotonic()
    second = subprocess.run(LAUNCHER, cwd=ROOT, env=launcher_env(tmp_path, free_port()), capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=30, start_new_session=True)
    assert time.monotonic() - t0 < 15, "the second launcher took its time to refuse"
    assert second.returncode == 3, second
    data = (tmp_path / "data").resolve()
    assert second.stderr.decode() == (f"launcher: another launcher (pid {launched.proc.pid}) is running on data "
                                      f"directory {data}; stop it first\n")
    assert second.stdout == b"", "the second launcher started something before refusing"
    assert _pids(tmp_path) == before  # no second redis-server, no second matcher
    assert launched.proc.poll() is None
    assert httpx.get(f"{launched.url}/health", timeout=5).status_code == 200
    launched.log.seek(0)
    assert b"DIED" not in launched.log.read()


@pytest.mark.timeout(240)
def test_a_kill_9d_launcher_leaves_no_stale_lock(tmp_path: Path) -> None:
    with launch(tmp_path) as first:
        first.wait_health(60)
        children = _pids(tmp_path)
        os.kill(first.proc.pid, signal.SIGKILL)
        assert first.proc.wait(10) == -signal.SIGKILL
        # Its processes die with it (PR_SET_PDEATHSIG): no second matcher or gateway is left behind.
        left = [name for name, pid in children.items() if name != "redis" and not _gone(pid, 15)]
        _kill_orphans(first.proc.pid, children)
        assert not left, f"still running after the launcher was killed: {left}"
    with launch(tmp_path) as again:
        again.wait_health(60)
        assert (tmp_path / "data" / "launcher.lock").read_text() == f"{again.proc.pid}\n"
        again.proc.send_signal(signal.SIGINT)
        assert again.proc.wait(30) == 0
    assert (tmp_path / "data" / "launcher.lock").read_text() == ""  # released on a clean exit


def _pids(tmp: Path) -> dict[str, int]:
    pids: dict[str, int] = json.loads((tmp / "data" / "pids.json").read_text())
    return pids


def _gone(pid: int, within: float) -> bool:
    """The process exited (a zombie nobody reaped yet counts as gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat[stat.rindex(")") + 2] == "Z":
            return True
        time.sleep(0.05)
    return False


def _kill_orphans(launcher_pid: int, children: dict[str, int], within: float = 15) -> None:
    """What a kill -9 of the launcher leaves behind, all started by this test: redis-server in the launcher's own
    process group, every other child in a session (and group) of its own, with its workers."""
    groups = {launcher_pid} | {pid for name, pid in children.items() if name != "redis"}
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + within
    for pid in children.values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def _market_data_flows(redis_port: int, within: float = 30) -> None:
    """What ``redis-cli -p <port> PSUBSCRIBE 'md:*'`` shows: bbo, book and trades of both exchanges."""
    r = redis.Redis(port=redis_port)
    ps = r.pubsub()
    try:
        ps.psubscribe("md:*")
        wanted = {f"md:{kind}:{ex}" for kind in ("bbo", "book", "trade") for ex in ("binance", "okx")}
        wanted |= {"md:status:binance", "md:status:okx"}
        seen: set[str] = set()
        deadline = time.monotonic() + within
        while not wanted <= seen and time.monotonic() < deadline:
            msg = ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                seen.add(":".join(msg["channel"].decode().split(":")[:3]))
        assert wanted <= seen, f"missing {sorted(wanted - seen)}"
        for ex in ("binance", "okx"):
            assert r.hget(f"md:feed:{ex}", "state") == b"up"
            assert r.get(f"md:last:bbo:{ex}:BTCUSDT")
    finally:
        ps.close()
        r.close()


def _gateway_best_touch(port: int, jwt_secret: str, within: float = 15) -> None:
    tok = tokens.issue("e2e", jwt_secret, 600)
    with connect(f"ws://127.0.0.1:{port}/ws?token={tok}", open_timeout=5, close_timeout=2) as ws:
        ws.send(json.dumps({"action": "subscribe", "stream": "best_touch", "symbol": "BTCUSDT", "exchange": "all"}))
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no best touch with both exchanges live"
            m = json.loads(ws.recv(timeout=left))
            if m["type"] == "best_touch" and m["data"]["live"] == ["binance", "okx"]:
                d = m["data"]
                assert d["bid_px"] < d["ask_px"] or d["crossed"]
                assert d["bid_exchange"] in ("binance", "okx") and d["ask_exchange"] in ("binance", "okx")
                return


# ------------------------------------------------------------------------------------------ cluster mode


def _cluster_binary_or_skip() -> None:
    try:
        cluster_server_binary()
    except NoClusterServer as e:
        pytest.skip(f"no Redis >= 7 / Valkey server for a cluster: {e}")


CLUSTER_LAUNCHER = [*LAUNCHER, "--cluster"]


def _two_free_ports() -> int:
    """A port P with P + 1 free too (the second gateway's)."""
    return free_port(span=2)


def _node_ports(out: str) -> list[int]:
    return [int(p) for p in re.findall(r"node-\d+ +master +127\.0\.0\.1:(\d+) ", out)]


def _started_pids(out: str) -> dict[int, str]:
    return {int(pid): name for name, pid in re.findall(r"started (\S+) \(pid (\d+)\)", out)}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)


def _assert_formed(ports: list[int]) -> dict[int, str]:
    """Every node: cluster_state ok, 3 nodes known, all 16384 slots, split over the 3 masters. Node ids by port."""
    ids: dict[int, str] = {}
    for port in ports:
        with redis.Redis(port=port, decode_responses=True, socket_timeout=5) as r:
            info = r.execute_command("CLUSTER", "INFO")
            assert "cluster_state:ok" in info and "cluster_slots_ok:16384" in info, info
            assert "cluster_known_nodes:3" in info and "cluster_size:3" in info, info
            owners: dict[int, int] = {}
            for start, end, master, *replicas in r.execute_command("CLUSTER", "SLOTS"):
                assert not replicas
                owners[int(master[1])] = owners.get(int(master[1]), 0) + int(end) - int(start) + 1
            assert sorted(owners) == sorted(ports) and sum(owners.values()) == 16384, owners
            ids[port] = r.execute_command("CLUSTER", "MYID")
    return ids


def _cluster_healthy(ports: list[int]) -> bool:
    try:
        _assert_formed(ports)
        return True
    except (AssertionError, redis.RedisError):
        return False


def _wait(pred: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_run_cluster_starts_the_system_on_three_masters_and_sigterm_stops_every_process(tmp_path: Path) -> None:
    """`make run CLUSTER=1 FEED=sim`: an embedded 3-master cluster in data/cluster, two gateways (P, P+1), two
    matchers, the ingestors and the simulator; a kill -9'd node is restarted on its port; SIGTERM stops every
    process and node; a second start brings the same cluster back (same nodes, same data)."""
    _cluster_binary_or_skip()
    port = _two_free_ports()
    data = tmp_path / "data"
    with launch(tmp_path, CLUSTER_LAUNCHER, port) as system:
        try:
            system.wait_health(90, port)
            system.wait_health(30, port + 1)
            out = system.output()
            ports = _node_ports(out)
            assert len(ports) == 3, out[-3000:]
            assert all(f"-c -p {p}" in out for p in ports), "no redis-cli -c -p line per node"
            ids = _assert_formed(ports)
            layout = json.loads((data / "cluster" / "layout.json").read_text())
            assert layout["ports"] == ports and layout["masters"] == 3 and layout["replicas"] == 0
            for i in range(3):
                assert (data / "cluster" / f"node-{i}" / "nodes.conf").exists()
                assert (data / "cluster" / f"node-{i}" / "appendonlydir").is_dir()
            assert f"http://127.0.0.1:{port} and http://127.0.0.1:{port + 1}" in out
            assert "share 4 matcher shards" in out
            secret = (data / "jwt_secret").read_text().strip()
            for p in (port, port + 1):  # market data through the cluster's sharded pub/sub, on both gateways
                _gateway_best_touch(p, secret, within=30)

            pids = _pids(tmp_path)
            expected = {"simulator", "ingestor-binance", "ingestor-okx", "gateway-1", "gateway-2",
                        "redis-node-0", "redis-node-1", "redis-node-2"}
            assert expected <= set(pids), pids
            started = set(_started_pids(out).values())
            assert {"matcher-1", "matcher-2"} <= started and "matcher" not in started and "gateway" not in started
            for name in ("gateway-1", "gateway-2", "ingestor-binance", "ingestor-okx"):
                env = _environ(pids[name])
                assert env["REDIS_CLUSTER"] == "1", name
                assert sorted(int(u.rsplit(":", 1)[1]) for u in env["REDIS_URL"].split(",")) == sorted(ports), env
                assert env["SR_MATCHER__SHARDS"] == "4", name
            assert _environ(pids["gateway-2"])["SR_GATEWAY__PORT"] == str(port + 1)

            # A probe key, to find again after a restart (AOF).
            with redis.RedisCluster(host="127.0.0.1", port=ports[0], decode_responses=True) as rc:
                rc.set("{launcher-test}probe", "kept")

            # kill -9 of a node: the launcher restarts it on the same port and directory; it rejoins.
            victim = pids["redis-node-1"]
            os.kill(victim, signal.SIGKILL)
            _wait(lambda: _pids(tmp_path).get("redis-node-1", victim) != victim, 20, "redis-node-1 restarted")
            _wait(lambda: _cluster_healthy(ports), 30, "the cluster healthy again")
            assert f"restarted redis node-1 on port {ports[1]}" in system.output()

            everything = set(_started_pids(system.output())) | set(_pids(tmp_path).values())
            system.proc.send_signal(signal.SIGTERM)
            assert system.proc.wait(40) == 0
            out = system.output()
            assert "all processes stopped" in out and "redis cluster stopped (3 nodes)" in out
            died = [line for line in out.splitlines() if "DIED" in line and "redis node-1" not in line]
            assert not died, died  # no process died, not even when a node was killed under it
            left = [pid for pid in everything if not _gone(pid, 5)]
            assert not left, f"still running after SIGTERM: {left}"
            for p in ports:
                with pytest.raises(OSError), socket.create_connection(("127.0.0.1", p), timeout=1):
                    pass
        except BaseException:
            print(system.output()[-8000:])
            raise

    # The same data directory: the same cluster comes back (nodes.conf, AOF), on the same ports.
    with launch(tmp_path, CLUSTER_LAUNCHER, port, log_name="launcher2.log") as again:
        try:
            again.wait_health(90, port)
            out = again.output()
            assert "embedded Redis Cluster brought back" in out, out[-3000:]
            assert _node_ports(out) == ports
            assert _assert_formed(ports) == ids
            with redis.RedisCluster(host="127.0.0.1", port=ports[2], decode_responses=True) as rc:
                assert rc.get("{launcher-test}probe") == "kept"
            again.proc.send_signal(signal.SIGINT)
            assert again.proc.wait(40) == 0
        except BaseException:
            print(again.output()[-8000:])
            raise


def _refused(tmp_path: Path, within: float = 20) -> str:
    """Run ``--cluster`` on ``tmp_path``'s data directory, expecting a quick refusal before anything starts."""
    t0 = time.monotonic()
    done = subprocess.run(LAUNCHER + ["--cluster"], cwd=ROOT, env=launcher_env(tmp_path, free_port()),
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=60, start_new_session=True)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert time.monotonic() - t0 < within, f"took {time.monotonic() - t0:.1f}s to refuse: {out}"
    assert done.returncode == 2, out
    assert "the embedded Redis Cluster did not start" in out and "started" not in out, out
    return out


@pytest.mark.timeout(180)
def test_a_cluster_directory_that_cannot_be_brought_back_is_refused_with_a_reason(tmp_path: Path) -> None:
    _cluster_binary_or_skip()
    base = tmp_path / "data" / "cluster"
    (base / "node-0").mkdir(parents=True)
    (base / "node-0" / "nodes.conf").write_text("garbage\n")
    out = _refused(tmp_path)
    assert "no layout.json" in out and f"move {base.resolve()} away" in out.replace(str(base), str(base.resolve()))

    ports = [p for p in (free_port() for _ in range(50)) if p <= 55535 and port_free(p + 10000)][:3]
    layout = {"masters": 3, "replicas": 1, "ports": ports * 2, "server": ""}
    (base / "layout.json").write_text(json.dumps(layout))
    out = _refused(tmp_path)
    assert "3 masters with 1 replica(s) each" in out and "--cluster-replicas 1" in out

    layout = {"masters": 3, "replicas": 0, "ports": ports, "server": ""}
    (base / "layout.json").write_text(json.dumps(layout))
    out = _refused(tmp_path)
    assert "node-1, node-2 lost their nodes.conf" in out

    for i in (1, 2):
        (base / f"node-{i}").mkdir()
        (base / f"node-{i}" / "nodes.conf").write_text("garbage\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[1]))
        taken.listen()
        out = _refused(tmp_path)
        assert f"port(s) [{ports[1]}] are in use" in out

    (base / "node-0" / "nodes.conf").write_text(
        f"{'a' * 40} 127.0.0.1:{ports[0]}@{ports[0] + 10000} myself,master - 0 0 1 connected 0-5461\n"
        f"{'b' * 40} 127.0.0.1:1234@11234 master - 0 0 2 connected 5462-16383\nvars currentEpoch 2 lastVoteEpoch 0\n")
    out = _refused(tmp_path)
    assert "knows nodes on ports" in out and "would not find one another" in out

    (base / "node-0" / "nodes.conf").write_text("garbage\n")
    out = _refused(tmp_path, within=40)  # the servers refuse the corrupt nodes.conf: said at once, no wait
    assert "could not be brought back" in out and "corrupted cluster config file" in out, out
    assert "server.log" in out and "move" in out
    assert json.loads((base / "layout.json").read_text())["ports"] == ports  # nothing of it was removed


@pytest.mark.timeout(180)
def test_run_cluster_on_a_cluster_of_ones_own_starts_no_server(tmp_path: Path, redis_cluster: EmbeddedCluster,
                                                                cluster_url: str) -> None:
    """REDIS_URL (seed list) + REDIS_CLUSTER=1, no --cluster: that cluster is used, nothing embedded is started."""
    port = _two_free_ports()
    argv = [sys.executable, "-c", "import launcher.main as m; m.RESTART_LIMIT = 10**6; "
            "raise SystemExit(m.main(['--feed', 'sim']))"]
    env = {"REDIS_URL": redis_cluster.urls, "REDIS_CLUSTER": "1"}
    with launch(tmp_path, argv, port, extra_env=env) as system:
        try:
            system.wait_health(90, port)
            system.wait_health(30, port + 1)
            out = system.output()
            assert f"using the Redis Cluster at {redis_cluster.urls}" in out
            assert "embedded Redis Cluster" not in out and not (tmp_path / "data" / "cluster").exists()
            pids = _pids(tmp_path)
            assert not [n for n in pids if n.startswith("redis")], pids
            assert {"gateway-1", "gateway-2", "ingestor-binance", "ingestor-okx"} <= set(pids)
            assert _environ(pids["gateway-2"])["REDIS_URL"] == redis_cluster.urls
            system.proc.send_signal(signal.SIGTERM)
            assert system.proc.wait(40) == 0
        except BaseException:
            print(system.output()[-8000:])
            raise
    assert all(n.alive for n in redis_cluster.nodes)  # not ours to stop
