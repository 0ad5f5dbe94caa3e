"""REST CPU as ratios to a reference measured in the same run: ``python -m bench.rest_ratio [--clients 16] [--seconds 5]``.

One run starts, one after the other, on loopback:

(a) the reference: a trivial FastAPI app on uvicorn, one worker (``bench/trivial_app.py``: one route returning a
    small dict);
(b) the gateway (``python -m gateway``, one worker) with the matcher, on an embedded redis-server.

Each is driven by the same load tool (``bench.orders.Http``: keep-alive HTTP/1.1, ``--clients`` concurrent clients,
closed loop, ``--seconds`` per phase), and the server's CPU (utime + stime from /proc) is divided by the requests
answered. Printed: the trivial route, the gateway's ``GET /health`` and an accepted limit order (``POST /orders``,
resting: it never crosses), each in µs of server CPU per request and as a ratio to the trivial route; for orders,
Redis's CPU per order beside it. Figures, not assertions: no test checks a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis

from bench.orders import ROOT, SECRET, Http, cpu_s, funded_clients, heartbeat, spawn, wait_port
from shared import tokens
from shared.embedded_redis import EmbeddedRedis, free_port

Request = Callable[[int, int], tuple[str, str, bytes]]  # (client, n) -> method, path, body


async def drive(conns: list[Http], toks: list[str], make: Request, seconds: float, ok: int,
                pids: dict[str, list[int]]) -> tuple[int, int, dict[str, float]]:
    """Closed loop for ``seconds``: answers with status ``ok``, other answers, CPU seconds per process group."""
    good = bad = 0
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


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def warm(conns: list[Http], toks: list[str], make: Request, ok: int) -> None:
    for i, c in enumerate(conns):
        method, path, body = make(i, -1)
        st, data = await c.request(method, path, toks[i], body)
        assert st == ok, (st, data)


def line(name: str, good: int, bad: int, spent: float, ref: float | None, extra: str = "") -> str:
    per = spent / max(1, good) * 1e6
    ratio = f"{per / ref:.2f}x the trivial route" if ref else "reference"
    return f"  {name:<28} {per:8,.0f} µs server CPU/request  ({ratio}; {good} answered, {bad} other){extra}"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="always",
                    help="Redis AOF fsync policy (the product default is always: no acknowledged write lost)")
    args = ap.parse_args()
    log_level = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
    print(f"REST CPU per request, {args.clients} keep-alive clients, closed loop, {args.seconds:g} s per phase "
          f"(python -m bench.rest_ratio --clients {args.clients} --seconds {args.seconds:g})")

    # (a) the reference
    port = free_port()
    ref_proc = start_reference(port, log_level)
    try:
        await wait_port(port)
        conns = [Http(port) for _ in range(args.clients)]
        toks = [tokens.issue(f"ref{i}", SECRET, 3600) for i in range(args.clients)]

        def get_root(i: int, n: int) -> tuple[str, str, bytes]:
            return "GET", "/", b""

        await warm(conns, toks, get_root, 200)
        good, bad, spent = await drive(conns, toks, get_root, args.seconds, 200, {"server": [ref_proc.pid]})
        for c in conns:
            await c.close()
    finally:
        stop([ref_proc])
    ref = spent["server"] / max(1, good) * 1e6
    lines = [line("trivial FastAPI route", good, bad, spent["server"], None)]

    # (b) the gateway
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedRedis(tmp, appendfsync=args.appendfsync).start()
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
            await wait_port(port)
            await asyncio.sleep(0.5)
            assert srv.proc is not None
            pids = {"server": [procs[0].pid], "redis": [srv.proc.pid], "matcher": [procs[1].pid]}
            toks, conns = await funded_clients(port, "ratio", args.clients)

            def get_health(i: int, n: int) -> tuple[str, str, bytes]:
                return "GET", "/health", b""

            await warm(conns, toks, get_health, 200)
            good, bad, spent = await drive(conns, toks, get_health, args.seconds, 200, pids)
            lines.append(line("gateway GET /health", good, bad, spent["server"], ref))

            def place(i: int, n: int) -> tuple[str, str, bytes]:
                return "POST", "/orders", orjson.dumps(
                    {"token_id": f"r{n + 1}", "symbol": "BTCUSDT", "side": "buy", "price": "10000.00",
                     "quantity": "0.001"})

            await warm(conns, toks, place, 201)
            good, bad, spent = await drive(conns, toks, place, args.seconds, 201, pids)
            n = max(1, good)
            lines.append(line("gateway POST /orders (rests)", good, bad, spent["server"], ref,
                              f"; Redis {spent['redis'] / n * 1e6:,.0f} µs/order, "
                              f"matcher {spent['matcher'] / n * 1e6:,.0f} µs/order"))
            for c in conns:
                await c.close()
        finally:
            halt.set()
            await hb
            await r.aclose()
            if profile:
                procs[0].send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    procs[0].wait(30)
            stop(procs)
            srv.stop()
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
