"""Fan-out efficiency as a ratio to a bare ``websockets`` broadcast server, in one run: ``python -m bench.fanout_ratio
[--clients 1000] [--latency-clients 500] [--measure 10]`` (``make bench-fanout``).

1. The gateway (``python -m gateway``, one worker) on an embedded redis-server, fed by ``bench.fanout.publisher``
   (normalized messages published into Redis as the ingestors do, at the hftbacktest captures' rates: ~80 bbo/s +
   ~27 trades/s per pair, 5 pairs, ``ts_recv_us`` = publish time). Clients (``bench.rawws``, in ``--procs`` load
   processes, so the server's CPU is measured alone from /proc) are spread over the pairs and over ``--mixes``:
   by default best_touch+trades, best_touch+trades+ewma, trades+klines and all four (exchange ``all``, klines 1s,
   EWMA half-life 30 s). One *group* = one mix on one pair; the clients of a group get the same messages.
   a. ``--latency-clients`` clients: tick-to-client p50/p99 (receive time - ``ts_recv_us`` of best_touch, trades
      and ewma messages; klines are left out, their ``ts_recv_us`` is that of the candle's last trade).
   b. ``--clients`` clients: messages delivered per gateway CPU-second (utime + stime from /proc). Meanwhile one
      more client per group (in this process) records every payload it gets, with its receive time.
2. The reference (``bench.broadcast_ref``: ``websockets.asyncio.server`` + ``broadcast()``, uvloop), the gateway
   stopped: as many clients in the same groups; the recorded payloads are published into Redis at their recorded
   times (a payload several groups got, once, naming them all) and broadcast to the groups' clients, so the reference
   pushes the same frames to the same clients, each frame's ``ts_recv_us`` set to its publish time. First
   ``--latency-clients`` clients: tick-to-client p50/p99 as in 1a; then ``--clients``: messages delivered per
   reference CPU-second.

Printed: both figures and the ratio (target: the gateway >= 0.8x the reference), and both p99s with their ratio
(target < 10 ms; the load clients share the machine, so their own queueing is in both p99s alike).
What the gateway does beside pushing (decoding, best touch, candles, EWMA per subscription cohort) is in its figure;
the reference only pushes. Figures, not assertions: no test checks a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import quote

import orjson

from bench import rawws
from bench.broadcast_ref import CHANNEL
from bench.fanout import SECRET, STREAMS, publisher
from bench.fanout_tail import py_spy
from bench.orders import ROOT, cpu_s, pct, spawn, stop_procs, wait_port
from shared import tokens
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.lifeline import die_with_parent
from shared.settings import load_settings

MIXES = "best_touch+trades,best_touch+trades+ewma,trades+klines,best_touch+trades+klines+ewma"
TICK = 0.005


def group_of(i: int, symbols: list[str], mixes: list[str]) -> tuple[str, str]:
    """Client ``i``'s mix and pair."""
    return mixes[(i // len(symbols)) % len(mixes)], symbols[i % len(symbols)]


def client_url(url: str, i: int, mix: str, symbol: str) -> str:
    return f"{url}?token={tokens.issue(f'bench{i}', SECRET, 3600)}&group={quote(f'{mix}:{symbol}')}"


def subscribe_texts(mix: str, symbol: str) -> list[str]:
    return [orjson.dumps({"action": "subscribe", "stream": st, "symbol": symbol, "exchange": "all",
                          **STREAMS[st]}).decode() for st in mix.split("+")]


# -- load processes --------------------------------------------------------------------------------------


def load_process(url: str, first: int, n: int, symbols: list[str], mixes: list[str], subscribe: bool, cmds: Any,
                 results: Any) -> None:
    import uvloop

    uvloop.run(_load(url, first, n, symbols, mixes, subscribe, cmds, results))


async def _load(url: str, first: int, n: int, symbols: list[str], mixes: list[str], subscribe: bool, cmds: Any,
                results: Any) -> None:
    clients = []
    for i in range(first, first + n):
        mix, sym = group_of(i, symbols, mixes)
        clients.append((client_url(url, i, mix, sym), subscribe_texts(mix, sym) if subscribe else []))
    # settle: the subscriptions' acks and snapshots
    await rawws.load_clients(clients, rawws.Stats(4, skip=(b"klines",)), cmds, results, first, settle_s=0.5)


class Loaders:
    """Load processes holding clients ``first .. first + n - 1``, driven through queues."""

    def __init__(self, ctx: Any, url: str, first: int, n: int, procs: int, symbols: list[str], mixes: list[str],
                 subscribe: bool) -> None:
        self.results = ctx.Queue()
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        self.cmds = [ctx.Queue() for p in per if p]
        self.procs = [ctx.Process(target=load_process, daemon=True,
                                  args=(url, first + sum(per[:i]), per[i], symbols, mixes, subscribe, self.cmds[i],
                                        self.results)) for i in range(len(self.cmds))]
        for p in self.procs:
            p.start()

    async def ready(self) -> None:
        for _ in self.procs:
            await asyncio.to_thread(self.results.get, timeout=180)

    def send(self, cmd: str) -> None:
        for q in self.cmds:
            q.put(cmd)

    async def stats(self) -> list[dict[str, Any]]:
        return [(await asyncio.to_thread(self.results.get, timeout=60))[1] for _ in self.procs]

    def stop(self) -> None:
        self.send("quit")
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


# -- the replay of the recorded frames -------------------------------------------------------------------


def replayer(redis_url: str, schedule: list[tuple[float, bytes]], done: Any) -> None:
    import uvloop

    uvloop.run(_replay(redis_url, schedule))
    done.set()


async def _replay(redis_url: str, schedule: list[tuple[float, bytes]]) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    start = time.monotonic()
    i = 0
    while i < len(schedule):
        now = time.monotonic() - start
        pipe = r.pipeline(transaction=False)
        stamp = b"%d" % (time.time_ns() // 1000)
        while i < len(schedule) and schedule[i][0] <= now:
            pipe.publish(CHANNEL, restamp(schedule[i][1], stamp))
            i += 1
        if len(pipe):
            await pipe.execute()
        await asyncio.sleep(TICK)
    await r.aclose()


def restamp(frame: bytes, stamp: bytes) -> bytes:
    """``frame`` with its ``ts_recv_us`` set to ``stamp`` (the publish time, as the gateway run's publisher sets it):
    the reference's tick-to-client latency is then measured as the gateway's is."""
    at = frame.find(rawws.KEY)
    if at < 0:
        return frame
    start = at + len(rawws.KEY)
    end = start
    while end < len(frame) and frame[end:end + 1].isdigit():
        end += 1
    return frame[:start] + stamp + frame[end:]


def build_schedule(recorded: dict[str, list[tuple[int, bytes]]]) -> list[tuple[float, bytes]]:
    """Every distinct payload once, at the first time it was received, naming the groups that got it."""
    first: dict[bytes, tuple[int, list[str]]] = {}
    for group, frames in recorded.items():
        for t, payload in frames:
            seen = first.get(payload)
            if seen is None:
                first[payload] = (t, [group])
            else:
                first[payload] = (min(t, seen[0]), [*seen[1], group])
    t0 = min((t for t, _ in first.values()), default=0)
    return sorted(((t - t0) / 1e9, ",".join(groups).encode() + b"\n" + payload)
                  for payload, (t, groups) in first.items())


# -- orchestration ---------------------------------------------------------------------------------------


async def measure(loaders: list[Loaders], extra: rawws.Stats, pids: list[int], seconds: float | asyncio.Event
                  ) -> tuple[int, list[int], float, float, int]:
    """Messages, latency samples, server CPU seconds and wall seconds over one window; clients dropped."""
    extra.count, extra.on = 0, True
    for ld in loaders:
        ld.send("start")
    cpu0, t0 = cpu_s(pids), time.monotonic()
    if isinstance(seconds, asyncio.Event):
        await seconds.wait()
    else:
        await asyncio.sleep(seconds)
    for ld in loaders:
        ld.send("stop")
    extra.on = False
    cpu, secs = cpu_s(pids) - cpu0, time.monotonic() - t0
    stats = [s for ld in loaders for s in await ld.stats()]
    return (sum(s["count"] for s in stats) + extra.count, [x for s in stats for x in s["lat"]], cpu, secs,
            sum(s["closed"] for s in stats))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--latency-clients", type=int, default=500)
    ap.add_argument("--procs", type=int, default=2, help="load-client processes per set of clients")
    ap.add_argument("--measure", type=float, default=10.0, help="seconds per measured window")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=1.0, help="multiple of the captures' rates")
    ap.add_argument("--mixes", default=MIXES, help="streams of a client joined by +, the mixes by commas")
    ap.add_argument("--py-spy", default="", metavar="FILE",
                    help="record the gateway during the --clients window (FILE.svg, or FILE.txt: collapsed stacks)")
    args = ap.parse_args()
    mixes = args.mixes.split(",")
    for mix in mixes:
        if any(st not in STREAMS for st in mix.split("+")):
            raise SystemExit(f"--mixes: unknown stream in {mix!r} (known: {', '.join(STREAMS)})")
    symbols = list(load_settings(env={}).symbols)
    groups = [(m, s) for m in mixes for s in symbols]
    print(f"fan-out vs a bare websockets broadcast() server (python -m bench.fanout_ratio --clients {args.clients} "
          f"--latency-clients {args.latency_clients} --measure {args.measure:g} --rate {args.rate:g}); "
          f"{len(groups)} groups: {', '.join(mixes)} x {len(symbols)} pairs; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedRedis(tmp, appendfsync="no").start()
        procs: list[subprocess.Popen[bytes]] = []
        loaders: list[Loaders] = []
        extras: list[rawws.RawClient] = []
        stop = ctx.Event()
        pub = ctx.Process(target=publisher, args=(srv.url, symbols, args.rate, stop), daemon=True)
        try:
            # -- 1. the gateway --
            port = free_port()
            env = {**os.environ, "REDIS_URL": srv.url, "JWT_SECRET": SECRET, "PORT": str(port),
                   "LOG_LEVEL": "WARNING", "SR_GATEWAY__WORKERS": "1", "SR_WS__QUEUE_MAX": "5000"}
            gw = spawn("gateway", env)
            procs.append(gw)
            await wait_port(port)
            url = f"ws://127.0.0.1:{port}/ws"
            rec_stats = rawws.Stats(1 << 30)
            recorded: dict[str, list[tuple[int, bytes]]] = {}
            for k, (mix, sym) in enumerate(groups):
                c = await rawws.connect(client_url(url, 10**6 + k, mix, sym), rec_stats)
                frames = recorded[f"{mix}:{sym}"] = []
                c.on_text = lambda p, frames=frames: frames.append((time.monotonic_ns(), p))
                for text in subscribe_texts(mix, sym):
                    c.send_text(text)
                extras.append(c)
            n_lat = min(args.latency_clients, args.clients)
            loaders.append(Loaders(ctx, url, 0, n_lat, args.procs, symbols, mixes, True))
            await loaders[0].ready()
            pub.start()
            await asyncio.sleep(args.warmup)
            n, lat, cpu, secs, dropped = await measure(loaders, rec_stats, [gw.pid], args.measure)
            p99 = pct(lat, 99) / 1000
            print(f"gateway, {n_lat} clients (+{len(groups)} recorders): {n / secs:,.0f} msgs/s, tick-to-client p50 "
                  f"{pct(lat, 50) / 1000:.2f} ms, p99 {p99:.2f} ms (target < 10 ms), gateway {cpu / secs:.2f} core, "
                  f"{n / cpu:,.0f} msgs per CPU-s, {dropped} dropped", flush=True)
            if args.clients > n_lat:
                loaders.append(Loaders(ctx, url, n_lat, args.clients - n_lat, args.procs, symbols, mixes, True))
                await loaders[-1].ready()
            for frames in recorded.values():
                frames.clear()
            await asyncio.sleep(args.warmup)
            spy = py_spy(gw.pid, args.measure, args.py_spy) if args.py_spy else None
            g_n, g_lat, g_cpu, g_secs, g_dropped = await measure(loaders, rec_stats, [gw.pid], args.measure)
            print(f"gateway, {args.clients} clients (+{len(groups)} recorders): {g_n / g_secs:,.0f} msgs/s, "
                  f"p99 {pct(g_lat, 99) / 1000:.2f} ms, gateway {g_cpu / g_secs:.2f} core, "
                  f"{g_n / g_cpu:,.0f} msgs per CPU-s, {g_dropped} dropped", flush=True)
            if spy is not None:
                await asyncio.to_thread(spy.wait, 30)
            stop.set()
            pub.join(10)
            for ld in loaders:
                ld.stop()
            loaders.clear()
            for c in extras:
                c.close()
            extras.clear()
            stop_procs(procs)
            procs.clear()
            schedule = build_schedule(recorded)
            recorded.clear()

            # -- 2. the reference --
            ref_port = free_port()
            ref = subprocess.Popen([sys.executable, "-m", "bench.broadcast_ref", str(ref_port), srv.url],  # noqa: ASYNC220
                                   cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=die_with_parent(signal.SIGTERM))
            procs.append(ref)
            await wait_port(ref_port)
            ref_url = f"ws://127.0.0.1:{ref_port}/ws"
            count_stats = rawws.Stats(1 << 30)
            for k, (mix, sym) in enumerate(groups):
                extras.append(await rawws.connect(client_url(ref_url, 10**6 + k, mix, sym), count_stats))

            async def replay_window() -> tuple[int, list[int], float, float, int]:
                done = ctx.Event()
                rep = ctx.Process(target=replayer, args=(srv.url, schedule, done), daemon=True)
                finished = asyncio.Event()

                async def watch() -> None:
                    await asyncio.to_thread(done.wait, 3 * args.measure + 30)
                    await asyncio.sleep(0.2)  # the last frames in flight
                    finished.set()

                rep.start()
                watcher = asyncio.create_task(watch())
                result = await measure(loaders, count_stats, [ref.pid], finished)
                await watcher
                rep.join(10)
                return result

            loaders.append(Loaders(ctx, ref_url, 0, n_lat, args.procs, symbols, mixes, False))
            await loaders[0].ready()
            await asyncio.sleep(1.0)
            _, r_lat, _, _, _ = await replay_window()
            r_p99 = pct(r_lat, 99) / 1000
            print(f"reference, {n_lat} clients (+{len(groups)}): tick-to-client p50 {pct(r_lat, 50) / 1000:.2f} ms, "
                  f"p99 {r_p99:.2f} ms", flush=True)
            if args.clients > n_lat:
                loaders.append(Loaders(ctx, ref_url, n_lat, args.clients - n_lat, args.procs, symbols, mixes, False))
                await loaders[-1].ready()
            await asyncio.sleep(1.0)
            r_n, _, r_cpu, r_secs, r_dropped = await replay_window()
            print(f"reference, {args.clients} clients (+{len(groups)}): {r_n / r_secs:,.0f} msgs/s, reference "
                  f"{r_cpu / r_secs:.2f} core, {r_n / r_cpu:,.0f} msgs per CPU-s, {r_dropped} dropped "
                  f"({len(schedule)} distinct frames replayed)", flush=True)
            ratio = (g_n / g_cpu) / (r_n / r_cpu)
            print(f"RESULT fan-out at {args.clients} clients: gateway {g_n / g_cpu:,.0f} msgs per CPU-s, bare websockets "
                  f"broadcast() {r_n / r_cpu:,.0f}: {ratio:.2f}x (target >= 0.8x); messages {g_n:,} vs {r_n:,}; "
                  f"p99 at {n_lat} clients {p99:.2f} ms (target < 10 ms), the reference's {r_p99:.2f} ms on the same frames: "
                  f"{p99 / r_p99:.2f}x")
        finally:
            stop.set()
            if pub.is_alive():
                pub.join(10)
            for ld in loaders:
                ld.stop()
            for c in extras:
                c.close()
            stop_procs(procs)
            srv.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        import uvloop

        uvloop.run(main())
