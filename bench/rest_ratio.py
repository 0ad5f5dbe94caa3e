"""REST CPU as ratios to a reference measured in the same run: ``python -m bench.rest_ratio [--clients 16]
[--seconds 3] [--rounds 3]`` (``make bench-orders``).

One run starts, on loopback:

(a) the reference: a trivial FastAPI app on uvicorn, one worker (``bench/trivial_app.py``: one route returning a
    small dict);
(b) the gateway (``python -m gateway``, one worker) with the matcher, on an embedded redis-server.

Each is driven by the same load tool (``bench.orders.Http``: keep-alive HTTP/1.1, ``--clients`` concurrent clients,
closed loop, ``--seconds`` per phase), and the server's CPU (utime + stime from /proc) is divided by the requests
answered. The three phases (trivial route, the gateway's ``GET /health``, an accepted limit order: ``POST /orders``
resting, it never crosses) run interleaved for ``--rounds`` rounds; printed are the medians, in µs of server CPU per
request and as a ratio to the trivial route (the median of each round's ratio), and for orders Redis's and the
matcher's CPU per order beside it. Figures, not assertions: no test checks a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis

from bench.orders import (
    ROOT,
    SECRET,
    Http,
    commands_line,
    cpu_s,
    funded_clients,
    heartbeat,
    spawn,
    stop_procs,
    wait_port,
)
from shared import tokens
from shared.embedded_redis import EmbeddedRedis, free_port

Request = Callable[[int, int], tuple[str, str, bytes]]  # (client, n) -> method, path, body


async def drive(conns: list[Http], toks: list[str], make: Request, seconds: float, ok: int,
                pids: dict[str, list[int]]) -> tuple[int, int, dict[str, float]]:
    """Closed loop for ``seconds``: answers with status ``ok``, other answers, CPU seconds per process group."""
    good = bad = 0
    for c in conns:  # the idle ones were closed by the server's keep-alive timeout while other phases ran
        await c.close()
        c.reader = c.writer = None
    cpu0 = {k: cpu_s(v) for k, v in pids.items()}
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal good, bad
        n = 0
        while time.monotonic() < deadline:
            method, path, body = make(i, n)
            st, _ = await conns[i].request(method, path, toks[i], body)
            if st == ok:
                good += 1
            else:
                bad += 1
            n += 1

    await asyncio.gather(*[client(i) for i in range(len(conns))])
    return good, bad, {k: cpu_s(v) - cpu0[k] for k, v in pids.items()}


def start_reference(port: int, log_level: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.trivial_app:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--log-level", log_level.lower(), "--no-access-log"],
        cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True)


async def warm(conns: list[Http], toks: list[str], make: Request, ok: int) -> None:
    for i, c in enumerate(conns):
        method, path, body = make(i, -1)
        st, data = await c.request(method, path, toks[i], body)
        assert st == ok, (st, data)


def line(name: str, counts: list[int], per: float, ratio: float | None, extra: str = "") -> str:
    how = f"{ratio:.2f}x the trivial route" if ratio is not None else "the reference"
    return (f"  {name:<28} {per:8,.0f} µs server CPU/request  ({how}; {counts[0]} answered, {counts[1]} other)"
            f"{extra}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per phase and round")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of the three phases, interleaved (the median is printed: a busy machine skews "
                         "one phase, not the ratio)")
    ap.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="always",
                    help="Redis AOF fsync policy (the product default is always: no acknowledged write lost)")
    args = ap.parse_args()
    log_level = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
    print(f"REST CPU per request: {args.clients} keep-alive clients, closed loop, {args.seconds:g} s per phase, "
          f"{args.rounds} interleaved rounds, medians (python -m bench.rest_ratio --clients {args.clients} "
          f"--seconds {args.seconds:g} --rounds {args.rounds})")

    with tempfile.TemporaryDirectory() as tmp:
        ref_port = free_port()
        ref_proc = start_reference(ref_port, log_level)  # (a) the reference
        srv = EmbeddedRedis(tmp, appendfsync=args.appendfsync).start()  # (b) the gateway, its Redis and matcher
        port = free_port()
        env = {**os.environ, "REDIS_URL": srv.url, "JWT_SECRET": SECRET, "PORT": str(port), "LOG_LEVEL": log_level,
               "SR_GATEWAY__WORKERS": "1", "SR_METRICS__MATCHER_PORT": "0"}
        # BENCH_PROFILE=/tmp/gw.prof: the gateway runs under cProfile (stopped with SIGINT so the file is written)
        profile = os.environ.get("BENCH_PROFILE", "")
        procs = [spawn("gateway", env, profile), spawn("matcher", env)]
        r = aioredis.Redis.from_url(srv.url)
        halt = asyncio.Event()
        hb = asyncio.create_task(heartbeat(r, halt))
        try:
            await wait_port(ref_port)
            await wait_port(port)
            await asyncio.sleep(0.5)
            assert srv.proc is not None
            ref_pids = {"server": [ref_proc.pid]}
            pids = {"server": [procs[0].pid], "redis": [srv.proc.pid], "matcher": [procs[1].pid]}
            ref_conns = [Http(ref_port) for _ in range(args.clients)]
            ref_toks = [tokens.issue(f"ref{i}", SECRET, 3600) for i in range(args.clients)]
            toks, conns = await funded_clients(port, "ratio", args.clients)

            def get_root(i: int, n: int) -> tuple[str, str, bytes]:
                return "GET", "/", b""

            def get_health(i: int, n: int) -> tuple[str, str, bytes]:
                return "GET", "/health", b""

            def placing(rnd: int) -> Request:
                def place(i: int, n: int) -> tuple[str, str, bytes]:
                    return "POST", "/orders", orjson.dumps(
                        {"token_id": f"r{rnd}-{n + 1}", "symbol": "BTCUSDT", "side": "buy", "price": "10000.00",
                         "quantity": "0.001"})
                return place

            await warm(ref_conns, ref_toks, get_root, 200)
            await warm(conns, toks, get_health, 200)
            await warm(conns, toks, placing(-1), 201)
            per: dict[str, list[float]] = {"ref": [], "health": [], "orders": [], "redis": [], "matcher": []}
            counts = {"ref": [0, 0], "health": [0, 0], "orders": [0, 0]}
            calls: dict[str, int] = {}  # Redis commands over the order phases (INFO commandstats)
            for rnd in range(args.rounds):
                for name, cs, ts, make, ok, ps in (("ref", ref_conns, ref_toks, get_root, 200, ref_pids),
                                                   ("health", conns, toks, get_health, 200, pids),
                                                   ("orders", conns, toks, placing(rnd), 201, pids)):
                    stats0 = await r.info("commandstats") if name == "orders" else {}
                    good, bad, spent = await drive(cs, ts, make, args.seconds, ok, ps)
                    if name == "orders":
                        stats1 = await r.info("commandstats")
                        for k, v in stats1.items():
                            calls[k] = calls.get(k, 0) + v["calls"] - stats0.get(k, {}).get("calls", 0)
                    counts[name][0] += good
                    counts[name][1] += bad
                    n = max(1, good)
                    per[name].append(spent["server"] / n * 1e6)
                    if name == "orders":
                        per["redis"].append(spent["redis"] / n * 1e6)
                        per["matcher"].append(spent["matcher"] / n * 1e6)
            for c in ref_conns + conns:
                await c.close()
        finally:
            halt.set()
            await hb
            await r.aclose()
            if profile:
                procs[0].send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    procs[0].wait(30)
            stop_procs([ref_proc, *procs])
            srv.stop()
    med = statistics.median
    ref = med(per["ref"])
    ratios = {k: med(a / b for a, b in zip(per[k], per["ref"], strict=True)) for k in ("health", "orders")}
    print(line("trivial FastAPI route", counts["ref"], ref, None))
    print(line("gateway GET /health", counts["health"], med(per["health"]), ratios["health"]))
    print(line("gateway POST /orders (rests)", counts["orders"], med(per["orders"]), ratios["orders"],
               f"; Redis {med(per['redis']):,.0f} µs/order, matcher {med(per['matcher']):,.0f} µs/order"))
    print(commands_line({}, {k: {"calls": v} for k, v in calls.items()}, counts["orders"][0]))
    print("  per round (µs): " + "; ".join(f"{k} " + " ".join(f"{v:,.0f}" for v in vs) for k, vs in per.items()))


if __name__ == "__main__":
    asyncio.run(main())
