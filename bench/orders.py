"""Order benchmark: ``python -m bench.orders [--clients 64] [--seconds 10] [--ticks 300] [--rate 1000]``.

1. Throughput (closed loop, each client waits for its answer before the next order): one gateway process (``python -m gateway``, a real child process) and one matcher process on an
   embedded redis-server; ``--clients`` concurrent keep-alive HTTP clients (one user each) POST limit orders that
   rest (they never cross) for ``--seconds``; prints accepted orders/s and p50/p99 latency.
   Then the same clients in an open loop offering ``--rate`` orders/s on a fixed schedule: latency at that load,
   measured from each order's scheduled send time.
2. Tick-to-fill: a resting buy, then a crossing BBO published as an ingestor would (``ts_recv_us`` stamped at
   publish time); the time until the ``filled`` event is received by a client WebSocket subscribed to the
   ``orders`` stream (and, for comparison, on the user's Redis events channel ``orders:events:{u:<user>}``).
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
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import connect as ws_connect

from shared import names, tokens
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.schema import BBO, FeedStatus, encode
from shared.timeutil import now_us

SECRET = "bench-secret-" + "y" * 40
ROOT = Path(__file__).resolve().parent.parent


class Http:
    """A minimal HTTP/1.1 keep-alive client, so the client side costs little next to the server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        data = await self.reader.readexactly(length)
        return int(status_line.split()[1]), data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pids: list[int]) -> list[int]:
    """These processes and their descendants (uvicorn workers), alive ones only as far as /proc says."""
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def cpu_s(pids: list[int]) -> float:
    """utime + stime of these processes and their children, in seconds."""
    total = 0
    for pid in process_tree(pids):
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def stop_procs(procs: list[subprocess.Popen[bytes]], sig: int = signal.SIGTERM) -> None:
    """Signal every process, then wait for each (killed after 10 s)."""
    for p in procs:
        p.send_signal(sig)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class CpuMeter:
    """CPU seconds (utime + stime from /proc) spent by the gateway, and for comparison Redis and the matcher,
    over one phase."""

    def __init__(self, gateway: list[int], redis: list[int], matcher: list[int]) -> None:
        self.pids = {"gateway": gateway, "redis": redis, "matcher": matcher}
        self.t0: dict[str, float] = {}

    def start(self) -> None:
        self.t0 = {k: cpu_s(v) for k, v in self.pids.items() if v}

    def report(self, orders: int) -> str:
        spent = {k: cpu_s(self.pids[k]) - t0 for k, t0 in self.t0.items()}
        n = max(1, orders)
        per = ", ".join(f"{k} {v / n * 1e6:,.0f} µs" for k, v in spent.items())
        return f"  CPU per accepted order: {per} (gateway {spent['gateway']:.2f} s over {orders} orders)"


def commands_line(before: dict[str, Any], after: dict[str, Any], orders: float) -> str:
    """Redis commands per order over a phase (INFO commandstats), the busiest first: what each order costs Redis,
    the matcher's reads and acknowledgements included."""
    calls = {k.removeprefix("cmdstat_"): v["calls"] - before.get(k, {}).get("calls", 0) for k, v in after.items()}
    busiest = sorted(((n, c) for n, c in calls.items() if c > 0), key=lambda x: -x[1])[:12]
    return "  Redis commands per order: " + ", ".join(f"{n} {c / max(1.0, orders):.2f}" for n, c in busiest)


def pct(xs: Sequence[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def spawn(module: str, env: dict[str, str], profile: str = "") -> subprocess.Popen[bytes]:
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    return subprocess.Popen([sys.executable, *prof, "-m", module], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True)


async def wait_port(port: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


async def heartbeat(r: aioredis.Redis, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for ex in ("binance", "okx"):
            await r.publish(names.status_channel(ex), encode(FeedStatus(ex, "up", "bench", now_us())))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def bbo(r: aioredis.Redis, bid: str, ask: str) -> int:
    t = now_us()
    raw = encode(BBO("okx", "BTCUSDT", Decimal(bid), Decimal(1), Decimal(ask), Decimal(1), 1, t, t))
    await r.set(names.md_last_key("bbo", "okx", "BTCUSDT"), raw)
    await r.publish(names.md_channel("bbo", "okx", "BTCUSDT"), raw)
    return t


async def funded_clients(port: int, prefix: str, n: int) -> tuple[list[str], list[Http]]:
    """``n`` users with a token, a keep-alive connection and plenty of USDT each."""
    toks = [tokens.issue(f"{prefix}{i}", SECRET, 3600) for i in range(n)]
    conns = [Http(port) for _ in toks]
    for c, t in zip(conns, toks, strict=True):
        st, body = await c.request("POST", "/deposit", t, b'{"asset":"USDT","amount":1000000000}')
        assert st == 200, body
    return toks, conns


async def closed_loop(conns: list[Http], toks: list[str], seconds: float) -> tuple[int, int, list[float], float]:
    """Each connection places resting limit orders one after another for ``seconds``: (accepted, refused,
    latencies in ms, elapsed s)."""
    lat: list[float] = []
    answers = {True: 0, False: 0}
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            body = orjson.dumps({"token_id": f"o{n}", "symbol": "BTCUSDT", "side": "buy", "price": "10000.00",
                                 "quantity": "0.001"})
            t0 = time.perf_counter()
            st, _ = await conns[i].request("POST", "/orders", toks[i], body)
            lat.append((time.perf_counter() - t0) * 1000)
            answers[st == 201] += 1
            n += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[client(i) for i in range(len(conns))])
    return answers[True], answers[False], lat, time.perf_counter() - t0


async def throughput(port: int, clients: int, seconds: float, cpu: CpuMeter) -> None:
    toks, conns = await funded_clients(port, "bench", clients)
    cpu.start()
    accepted, rejected, lat, elapsed = await closed_loop(conns, toks, seconds)
    cpu_line = cpu.report(accepted)
    for c in conns:
        await c.close()
    print(f"orders: {clients} clients, {elapsed:.1f}s: {accepted} accepted, {rejected} rejected, "
          f"{accepted / elapsed:,.0f} accepted orders/s; latency p50 {pct(lat, 50):.1f} ms, "
          f"p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms")
    print(cpu_line)


async def offered_load(port: int, clients: int, rate: float, seconds: float, cpu: CpuMeter, prefix: str = "load",
                       what: str = "") -> float:
    """Open loop: ``clients`` connections together offer ``rate`` orders/s on a fixed schedule; each latency is
    measured from the order's *scheduled* send time, so a slow server cannot hide its queueing (no coordinated
    omission). Returns the p99 in ms."""
    toks, conns = await funded_clients(port, prefix, clients)
    lat: list[float] = []
    accepted = 0
    interval = clients / rate  # each connection's share of the schedule
    start = time.perf_counter() + 0.2
    n_per_client = int(seconds * rate / clients)
    cpu.start()

    async def client(i: int) -> None:
        nonlocal accepted
        for n in range(n_per_client):
            due = start + (n + i / clients) * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = orjson.dumps({"token_id": f"l{n}", "symbol": "BTCUSDT", "side": "buy", "price": "10000.00",
                                 "quantity": "0.001"})
            st, _ = await conns[i].request("POST", "/orders", toks[i], body)
            lat.append((time.perf_counter() - due) * 1000)
            accepted += st == 201

    await asyncio.gather(*[client(i) for i in range(clients)])
    elapsed = time.perf_counter() - start
    cpu_line = cpu.report(accepted)
    for c in conns:
        await c.close()
    print(f"orders at an offered {rate:,.0f}/s over {clients} connections{what} ({elapsed:.1f}s): {accepted} "
          f"accepted ({accepted / elapsed:,.0f}/s); latency from scheduled send p50 {pct(lat, 50):.1f} ms, "
          f"p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms")
    print(cpu_line)
    return pct(lat, 99)


async def caught_up(r: aioredis.Redis) -> None:
    """Until the matcher has read every order on its intake stream (placed while it was not running)."""
    wait_s = 60.0
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aioredis.ResponseError):
            stream = names.intake_stream(0)
            groups = await r.xinfo_groups(stream)
            last = (await r.xinfo_stream(stream))["last-generated-id"]
            if groups and groups[0]["last-delivered-id"] == last:
                return
        await asyncio.sleep(0.2)
    print(f"  (the matcher had not caught up with its intake stream after {wait_s:.0f} s)")


async def tick_to_fill(port: int, r: aioredis.Redis, ticks: int) -> None:
    """Crossing tick's ``ts_recv_us`` -> the ``filled`` event received by a client WebSocket (and, for
    comparison, on the user's Redis events channel, read at the same time)."""
    user = "bench-ticker"
    tok = tokens.issue(user, SECRET, 3600)
    http = Http(port)
    await http.request("POST", "/deposit", tok, b'{"asset":"USDT","amount":100000000}')
    ps = r.pubsub()
    await ps.subscribe(names.user_events_channel(user))
    on_redis: dict[str, int] = {}

    async def redis_reader() -> None:
        while True:
            m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if m is not None:
                ev = orjson.loads(m["data"])
                if ev["event"] == "filled":
                    on_redis[ev["order"]["token_id"]] = now_us()

    lat_ws: list[float] = []
    lat_redis: list[float] = []
    reader = asyncio.create_task(redis_reader())
    try:
        async with ws_connect(f"ws://127.0.0.1:{port}/ws?token={tok}", max_size=2**20) as ws:
            await ws.send(orjson.dumps({"action": "subscribe", "stream": "orders"}).decode())
            assert orjson.loads(await ws.recv())["type"] == "ack"
            for i in range(ticks):
                await bbo(r, "49000", "51000")
                st, body = await http.request("POST", "/orders", tok, orjson.dumps(
                    {"token_id": f"t{i}", "symbol": "BTCUSDT", "side": "buy", "price": "50000",
                     "quantity": "0.001"}))
                assert st == 201, body
                await asyncio.sleep(0.005)  # let the matcher index it as resting
                sent = await bbo(r, "49000", "49999.99")
                while True:
                    m = orjson.loads(await asyncio.wait_for(ws.recv(), 2.0))
                    d = m.get("data", {})
                    if m["type"] == "order" and d.get("event") == "filled" and d["order"]["token_id"] == f"t{i}":
                        lat_ws.append((now_us() - sent) / 1000)
                        break
                got = on_redis.get(f"t{i}")
                if got is not None:
                    lat_redis.append((got - sent) / 1000)
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await ps.aclose()
        await http.close()
    print(f"tick-to-fill-event on the client WebSocket (crossing BBO ts_recv_us -> 'filled' frame received), "
          f"{len(lat_ws)} ticks: p50 {pct(lat_ws, 50):.2f} ms, p99 {pct(lat_ws, 99):.2f} ms, "
          f"max {max(lat_ws):.2f} ms, mean {statistics.fmean(lat_ws):.2f} ms")
    if lat_redis:
        print(f"  same ticks on the Redis events channel: p50 {pct(lat_redis, 50):.2f} ms, "
              f"p99 {pct(lat_redis, 99):.2f} ms")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--rate", type=float, default=1000.0, help="offered orders/s of the open-loop phase (0: skip)")
    ap.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="always",
                    help="Redis AOF fsync policy (the product default is always: no acknowledged write lost)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedRedis(tmp, appendfsync=args.appendfsync).start()
        port = free_port()
        env = {**os.environ, "REDIS_URL": srv.url, "JWT_SECRET": SECRET, "PORT": str(port), "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING")}
        # BENCH_PROFILE=/tmp/gw.prof: the gateway runs under cProfile (stopped with SIGINT so the file is written)
        profile = os.environ.get("BENCH_PROFILE", "")
        # BENCH_MATCHER_PROFILE=/tmp/m.prof: the same for the matcher (it writes the file on SIGTERM too)
        with_matcher = not os.environ.get("BENCH_NO_MATCHER")
        procs = [spawn("gateway", env, profile)]
        r = aioredis.Redis.from_url(srv.url)
        stop = asyncio.Event()
        hb = asyncio.create_task(heartbeat(r, stop))
        try:
            await wait_port(port)
            await asyncio.sleep(0.5)
            assert srv.proc is not None
            cpu = CpuMeter([procs[0].pid], [srv.proc.pid], [])
            reference = 0.0
            if with_matcher:
                if args.rate > 0:  # the reference for the tail with the matcher: the same load without it
                    toks, conns = await funded_clients(port, "warm", args.clients)
                    await closed_loop(conns, toks, 2.0)  # a first phase would pay for the gateway's warm-up
                    for c in conns:
                        await c.close()
                    reference = await offered_load(port, args.clients, args.rate, args.seconds, cpu, "ref",
                                                   " without the matcher")
                procs.append(spawn("matcher", env, os.environ.get("BENCH_MATCHER_PROFILE", "")))
                cpu.pids["matcher"] = [procs[-1].pid]
                await caught_up(r)
            await throughput(port, args.clients, args.seconds, cpu)
            if args.rate > 0:
                before = await r.info("commandstats")
                p99 = await offered_load(port, args.clients, args.rate, args.seconds, cpu,
                                         what=" with the matcher" if with_matcher else " (no matcher)")
                print(commands_line(before, await r.info("commandstats"), args.rate * args.seconds))
                if reference:
                    print(f"RESULT open loop at {args.rate:,.0f} orders/s: p99 {p99:.1f} ms with the matcher "
                          f"(target < 20 ms), {reference:.1f} ms without it in the same run: {p99 / reference:.2f}x")
            if args.ticks > 0:
                await tick_to_fill(port, r, args.ticks)
        finally:
            stop.set()
            await hb
            await r.aclose()
            stop_procs(procs, signal.SIGINT if profile else signal.SIGTERM)
            srv.stop()


if __name__ == "__main__":
    asyncio.run(main())
