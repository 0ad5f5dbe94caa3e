"""Other clients' latency with and without clients that stopped reading (SIGSTOP), and the gateway's RSS.

    python -m bench.slowclient                                  # 100 clients; 0 and 10 stopped; 1x and 10x
    python -m bench.slowclient --clients 1000 --stopped 0,50 --rates 1 --measure 20

For each number of stopped clients a fresh ``python -m gateway`` (``--workers``) and Redis get the synthetic feed of
``bench.fanout`` (the captures' rates, or a multiple). First the stopped clients connect: ``tests.ws_sink``
processes subscribed to every stream of every pair and exchange filter (all kline intervals, ewma, orders),
then paused with SIGSTOP. Then the load clients of ``bench.fanout`` (best_touch + trades of one pair each) measure
latency (receive time - ``ts_recv_us``) while the gateway buffers for, and drops, the stopped ones. Columns:
stopped clients, dropped by the end (closed 4008 or 4009, from ``/metrics``), gateway RSS at the start of the
measurement and its peak (sampled every 0.2 s), and the load clients' figures as in ``bench.fanout``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx

from bench.fanout import SECRET, proc_usage, run_phase, start_gateway, stop_gateway
from shared import tokens
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.settings import ROOT, load_settings


def slow_closes(port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("sr_gateway_ws_slow_closes_total{")))


def start_sinks(url: str, n: int, symbols: list[str]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        tok = tokens.issue(f"stopped{i}", SECRET, 3600)
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.ws_sink", "--url", url, "--token", tok,
                                       "--symbols", ",".join(symbols)], cwd=ROOT, stdout=subprocess.PIPE,
                                      start_new_session=True))
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().decode()
        if not line.startswith("READY"):
            raise RuntimeError(f"a stopped client did not subscribe: {line!r}")
        os.kill(p.pid, signal.SIGSTOP)
    return procs


def stop_sinks(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
        p.wait(10)


def sample_rss(pid: int, peak: list[int], done: threading.Event) -> None:
    while not done.is_set():
        peak[0] = max(peak[0], proc_usage(pid)[1])
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100, help="well-behaved load clients")
    ap.add_argument("--stopped", default="0,10", help="numbers of stopped clients, one run each")
    ap.add_argument("--rates", default="1,10", help="multiples of the captures' rates")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--procs", type=int, default=2, help="load-client processes")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--measure", type=float, default=15.0)
    ap.add_argument("--queue-max", type=int, default=2000, help="ws.queue_max (the gateway's default)")
    args = ap.parse_args()

    symbols = list(load_settings(env={}).symbols)
    ctx = mp.get_context("spawn")
    rows: list[dict[str, Any]] = []
    print(f"cores={os.cpu_count()} workers={args.workers} clients={args.clients} queue_max={args.queue_max}")
    for n_stopped in (int(x) for x in args.stopped.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            srv = EmbeddedRedis(tmp, appendfsync="no").start()
            port = free_port()
            gw = start_gateway(srv.url, "hub", args.workers, port, "frames", extra_env={
                "SR_WS__MAX_SUBSCRIPTIONS": "500", "SR_WS__QUEUE_MAX": str(args.queue_max)})
            url = f"ws://127.0.0.1:{port}/ws"
            sinks: list[subprocess.Popen[bytes]] = []
            peak = [0]
            done = threading.Event()
            try:
                sinks = start_sinks(url, n_stopped, symbols)
                rss0 = proc_usage(gw.pid)[1]
                sampler = threading.Thread(target=sample_rss, args=(gw.pid, peak, done), daemon=True)
                sampler.start()
                for row in run_phase(ctx, url, gw, srv.url, symbols, args.clients,
                                     [float(x) for x in args.rates.split(",")], args.procs, args.warmup,
                                     args.measure, "raw"):
                    row.update(stopped=n_stopped, rss0=rss0 / 2**20, dropped_stopped=slow_closes(port))
                    rows.append(row)
                done.set()
                sampler.join()
                for r in rows:
                    if r["stopped"] == n_stopped:
                        r["rss_peak"] = peak[0] / 2**20
                        print(fmt(r), flush=True)
            finally:
                done.set()
                stop_sinks(sinks)
                stop_gateway(gw)
                srv.stop()
    print("\n| stopped | dropped | rate | clients | msgs/s | p50 ms | p99 ms | gw CPU | box CPU | RSS start MB "
          "| RSS peak MB |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stopped']} | {r['dropped_stopped']} | {r['rate']:.0f}x | {r['clients']} | {r['msgs_s']:.0f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['gw_cpu_s']:.2f} | {r['box_cpu_s']:.2f} | "
              f"{r['rss0']:.0f} | {r['rss_peak']:.0f} |")


def fmt(r: dict[str, Any]) -> str:
    return (f"stopped {r['stopped']:>3} (dropped {r['dropped_stopped']:>3}) {r['rate']:>3.0f}x {r['clients']:>5} clients "
            f"{r['msgs_s']:>8.0f} msgs/s p50 {r['p50_ms']:>7.1f} ms p99 {r['p99_ms']:>7.1f} ms gw CPU "
            f"{r['gw_cpu_s']:.2f} box {r['box_cpu_s']:.2f} RSS {r['rss0']:.0f} -> {r['rss_peak']:.0f} MB")


if __name__ == "__main__":
    main()
