"""Legitimate logins during a registration flood from one address, before and after the registration limits and
the bounded hashing queue (docs/auth.md "Registration flood").

One real redis-server; ``--users`` accounts registered first. Then, for each configuration in turn, a real gateway
process (``python -m gateway``, bcrypt cost ``--rounds``): the users log in one after the other in a loop each
(``--pause`` s between logins; a 503 is retried after its ``Retry-After``; the time counted is until the token
arrives) for ``--seconds`` with
nothing else going on (the reference), then again while ``--flood`` concurrent loops register new accounts from
the same address as fast as the gateway answers.

- ``before``: the gateway as it was before issue 15 (``--before``, a git revision, extracted with ``git archive``
  into a temporary folder and run from there with its own defaults: no registration limit, 256 hashes may wait,
  first come first served);
- ``after``: this tree's gateway with its defaults (``config/config.toml``): 10 registrations per address an hour,
  120 a minute in all, 16 hashes waiting of which registrations may fill half, logins served first.

Each line gives the logins' p50/p99 and the flood's p99 as a ratio to the same configuration's reference p99,
measured in the same run; the last line the ratio of the two floods' p99.

    .venv/bin/python -m bench.auth_flood [--rounds 12] [--users 3] [--pause 2] [--flood 32] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from bench.orders import stop_procs
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.settings import ROOT

PASSWORD = "bench-password"
LIFTED = {"SR_AUTH__REGISTRATIONS_PER_IP": "1000000000", "SR_AUTH__REGISTRATIONS_GLOBAL": "1000000000"}
BEFORE = "967e2be"  # main just before issue 15


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


@dataclass
class Logins:
    times: list[float] = field(default_factory=list)
    refused: int = 0  # 503s, retried

    def line(self) -> str:
        return (f"{len(self.times)} logins, p50 {pct(self.times, 50):.0f} ms, p99 {pct(self.times, 99):.0f} ms, "
                f"{self.refused} answered 503 first")


@contextlib.contextmanager
def gateway(redis_url: str, rounds: int, extra: dict[str, str], src: Path = ROOT) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, PORT=str(port), JWT_SECRET="bench-" + "s" * 40,
               SR_AUTH__BCRYPT_ROUNDS=str(rounds), SR_AUTH__LOGIN_FAILURES_PER_IP="1000000",
               SR_AUTH__LOGIN_FAILURES_PER_USER="1000000", LOG_LEVEL="WARNING", **extra)
    gw = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=src)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            if gw.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.1)
        yield base
    finally:
        stop_procs([gw])


async def login_loop(c: httpx.AsyncClient, user: str, pause: float, stop: asyncio.Event, out: Logins) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        while True:
            r = await c.post("/login", json={"username": user, "password": PASSWORD})
            if r.status_code != 503:
                break
            out.refused += 1
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
        r.raise_for_status()
        out.times.append(time.perf_counter() - t)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)


async def flood_loop(c: httpx.AsyncClient, stop: asyncio.Event, codes: dict[int, int]) -> None:
    while not stop.is_set():
        r = await c.post("/register", json={"username": "f" + uuid.uuid4().hex[:20], "password": PASSWORD})
        codes[r.status_code] = codes.get(r.status_code, 0) + 1


async def measure(base: str, users: list[str], pause: float, flood: int,
                  seconds: float) -> tuple[Logins, dict[int, int]]:
    out, codes, stop = Logins(), {}, asyncio.Event()
    async with httpx.AsyncClient(base_url=base, timeout=300) as legit, \
            httpx.AsyncClient(base_url=base, timeout=300, limits=httpx.Limits(max_connections=flood + 4)) as bad:
        tasks = [asyncio.create_task(login_loop(legit, u, pause, stop, out)) for u in users]
        tasks += [asyncio.create_task(flood_loop(bad, stop, codes)) for _ in range(flood)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return out, codes


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.auth_flood")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--users", type=int, default=3, help="legitimate users, each logging in in a loop")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds each user waits between its logins")
    ap.add_argument("--flood", type=int, default=32, help="concurrent registration loops")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--before", default=BEFORE, help="git revision of the 'before' gateway")
    args = ap.parse_args()
    users = [f"legit{i}" for i in range(args.users)]
    print(f"bcrypt cost {args.rounds}, {args.users} users logging in every {args.pause:g} s, flood of {args.flood} "
          f"registration loops, "
          f"{args.seconds:g} s each, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    results: dict[str, Logins] = {}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as old, EmbeddedRedis(tmp) as srv:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", args.before],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(old, filter="data")
        configs = {"before": ({}, Path(old)), "after": ({}, ROOT)}
        with gateway(srv.url, args.rounds, LIFTED) as base:
            for u in users:
                httpx.post(base + "/register", json={"username": u, "password": PASSWORD}, timeout=30).raise_for_status()
        for name, (extra, src) in configs.items():
            r = redis.Redis.from_url(srv.url)
            try:
                for k in r.scan_iter(match="auth:reg:*"):
                    r.delete(k)
            finally:
                r.close()
            with gateway(srv.url, args.rounds, extra, src) as base:
                idle, _ = asyncio.run(measure(base, users, args.pause, 0, args.seconds))
                busy, codes = asyncio.run(measure(base, users, args.pause, args.flood, args.seconds))
            results[name] = busy
            ratio = pct(busy.times, 99) / pct(idle.times, 99)
            print(f"{name:>6} reference (no flood): {idle.line()}")
            print(f"{name:>6} during the flood:     {busy.line()}; p99 = {ratio:.2f}x the reference; "
                  f"registrations answered {dict(sorted(codes.items()))}")
    print(f"flood p99 after / before = {pct(results['after'].times, 99) / pct(results['before'].times, 99):.3f}")


if __name__ == "__main__":
    main()
