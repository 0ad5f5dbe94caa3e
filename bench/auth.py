"""Login burst vs. the rest of the API: bcrypt must never stall the gateway's event loop.

Starts a real redis-server and a real gateway process (``python -m gateway``), registers one user, then
runs ``--clients`` concurrent login loops for ``--seconds`` (login limits lifted: in-flight attempts
for one username count against its limit) while a probe requests ``GET /info`` every
10 ms. Prints the time of a 401 for a wrong password and for an unknown user (they should match),
logins/s with their latency, and the probe's latency idle and during the burst.

    .venv/bin/python -m bench.auth [--rounds 12] [--clients 64] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from bench.orders import stop_procs
from shared.embedded_redis import EmbeddedRedis, free_port


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


async def probe(c: httpx.AsyncClient, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        r = await c.get("/info")
        r.raise_for_status()
        out.append(time.perf_counter() - t)
        await asyncio.sleep(0.01)


async def login_loop(c: httpx.AsyncClient, stop: asyncio.Event, out: list[float], codes: dict[int, int]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        r = await c.post("/login", json={"username": "bench", "password": "bench-password"})
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        if r.status_code == 200:
            out.append(time.perf_counter() - t)


async def run(base: str, clients: int, seconds: float) -> None:
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:
        for _ in range(200):
            try:
                if (await c.get("/health")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        r = await c.post("/register", json={"username": "bench", "password": "bench-password"})
        r.raise_for_status()

        times: dict[str, list[float]] = {"wrong password": [], "unknown user": []}
        for _ in range(15):  # interleaved, so machine noise hits both alike
            for name, username in (("wrong password", "bench"), ("unknown user", "nobody-here")):
                t = time.perf_counter()
                r = await c.post("/login", json={"username": username, "password": "wrong-password"})
                times[name].append(time.perf_counter() - t)
                assert r.status_code == 401
        for name, ts in times.items():
            print(f"401 {name:>14}: median {statistics.median(ts) * 1000:.1f} ms over {len(ts)}")

        idle: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(probe(c, stop, idle))
        await asyncio.sleep(2)
        stop.set()
        await task

        busy: list[float] = []
        logins: list[float] = []
        codes: dict[int, int] = {}
        stop = asyncio.Event()
        # The probe has its own client: a pool shared with 64 waiting logins would queue it behind them.
        probe_client = httpx.AsyncClient(base_url=base, timeout=120)
        tasks = [asyncio.create_task(probe(probe_client, stop, busy))]
        tasks += [asyncio.create_task(login_loop(c, stop, logins, codes)) for _ in range(clients)]
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        await probe_client.aclose()

    print(f"logins: {len(logins)} ok in {elapsed:.1f} s = {len(logins) / elapsed:.1f}/s with {clients} clients; "
          f"latency p50 {pct(logins, 50):.0f} ms, p99 {pct(logins, 99):.0f} ms; statuses {codes}")
    print(f"GET /info idle:        n={len(idle)} p50 {pct(idle, 50):.2f} ms, p99 {pct(idle, 99):.2f} ms, "
          f"max {max(idle) * 1000:.2f} ms")
    print(f"GET /info during burst: n={len(busy)} p50 {pct(busy, 50):.2f} ms, p99 {pct(busy, 99):.2f} ms, "
          f"max {max(busy) * 1000:.2f} ms, mean {statistics.mean(busy) * 1000:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.auth")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--hashes", type=int, default=0, help="max concurrent bcrypt hashes (0: the gateway's default)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(tmp) as redis_srv:
        port = free_port()
        env = dict(os.environ, REDIS_URL=redis_srv.url, PORT=str(port), JWT_SECRET="bench-" + "s" * 40,
                   SR_AUTH__BCRYPT_ROUNDS=str(args.rounds), SR_AUTH__MAX_CONCURRENT_HASHES=str(args.hashes),
                   SR_AUTH__LOGIN_FAILURES_PER_IP="1000000", SR_AUTH__LOGIN_FAILURES_PER_USER="1000000",
                   SR_AUTH__MAX_WAITING_HASHES="100000", LOG_LEVEL="WARNING")
        gw = subprocess.Popen([sys.executable, "-m", "gateway"], env=env)
        try:
            print(f"bcrypt cost {args.rounds}, max concurrent hashes {args.hashes or 'default'}, "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
            asyncio.run(run(f"http://127.0.0.1:{port}", args.clients, args.seconds))
        finally:
            stop_procs([gw])


if __name__ == "__main__":
    main()
