"""Fan-out benchmark: tick-to-client latency and delivered messages per gateway CPU-second.

    python -m bench.fanout                       # 100 and 1000 clients, 1x and 10x, ours and naive (~3 min)
    python -m bench.fanout --clients 100,1000,5000
    python -m bench.fanout --soak 600 --clients 1000 --variants hub   # memory over 10 minutes

A synthetic feed is published into Redis exactly as the ingestors do (``shared.schema`` on
``md:bbo|trade:<ex>:<SYM>`` and heartbeats on ``md:status:<ex>``) at the rates of the hftbacktest
BTCUSDT capture (~80 bookTicker/s + ~27 trades/s per symbol; each symbol's flow alternates between the
two exchanges) or 10x that, with ``ts_recv_us`` = publish time. The gateway runs as ``python -m gateway``
with several workers; load clients run in several processes, each client subscribed to best_touch
(exchange ``all``) and trades of one pair, pairs spread evenly. Latency = client receive time - ts_recv_us.
``--mixes`` picks other streams per client, several mixes in one run (``--mixes trades,ewma,klines``: each
client on that stream alone; ``best_touch+trades+klines+ewma``: all four), ewma with a 30 s half-life and
klines 1s (pushed every second: their latency is that of the last trade in the candle, not a delivery
time). ``--pairs N`` puts every client on the first N pairs (``--pairs 1``: all on one pair).
CPU times come from /proc/<pid>/stat (gateway master + workers) and getrusage (load processes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from bench import rawws
from shared import names, tokens
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.schema import BBO, FeedStatus, Trade, encode
from shared.settings import EXCHANGES, load_settings

BBO_PER_S = 80.0  # per symbol at 1x (hftbacktest BTCUSDT: ~28,000 bookTicker in ~6 min)
TRADES_PER_S = 27.0  # per symbol at 1x (~9,800 trades in ~6 min)
SECRET = "bench-secret-" + "x" * 32
TICK = 0.005
STREAMS: dict[str, dict[str, Any]] = {"best_touch": {}, "trades": {}, "klines": {"interval": "1s"}, "ewma": {"half_life": 30}}


def subscribe_messages(mix: str, symbol: str) -> list[dict[str, Any]]:
    """The subscribe requests of one client of ``mix`` (streams joined by ``+``) on ``symbol``."""
    return [{"action": "subscribe", "stream": st, "symbol": symbol, "exchange": "all", **STREAMS[st]}
            for st in mix.split("+")]


def now_us() -> int:
    return time.time_ns() // 1000


# -- feed ------------------------------------------------------------------------------------------------


def publisher(redis_url: str, symbols: list[str], rate: float, stop: Any) -> None:
    asyncio.run(_publish(redis_url, symbols, rate, stop))


async def _publish(redis_url: str, symbols: list[str], rate: float, stop: Any) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    rnd = random.Random(7)
    mids = {s: 1000 + 1000 * i for i, s in enumerate(symbols)}
    due_bbo = due_trade = 0.0
    seq = 0
    start = time.monotonic()
    last_beat = 0.0
    nb = len(symbols) * BBO_PER_S * rate
    nt = len(symbols) * TRADES_PER_S * rate
    tick = 0
    while not stop.is_set():
        tick += 1
        now = time.monotonic()
        pipe = r.pipeline(transaction=False)
        if now - last_beat >= 1.0:
            for ex in EXCHANGES:
                pipe.publish(names.status_channel(ex), encode(FeedStatus(ex, "up", "", now_us())))
            last_beat = now
        due_bbo += nb * TICK
        due_trade += nt * TICK
        while due_bbo >= 1:
            due_bbo -= 1
            seq += 1
            sym = symbols[seq % len(symbols)]
            ex = EXCHANGES[(seq // len(symbols)) % 2]
            mids[sym] += rnd.choice((-1, 1))
            m = Decimal(mids[sym]) / 100
            t = now_us()
            raw = encode(BBO(ex, sym, m, Decimal(rnd.randint(1, 500)) / 100, m + Decimal("0.01"),
                             Decimal(rnd.randint(1, 500)) / 100, seq, t, t))
            pipe.publish(names.md_channel("bbo", ex, sym), raw)
            pipe.set(names.md_last_key("bbo", ex, sym), raw)
        while due_trade >= 1:
            due_trade -= 1
            seq += 1
            sym = symbols[seq % len(symbols)]
            ex = EXCHANGES[(seq // len(symbols)) % 2]
            t = now_us()
            pipe.publish(names.md_channel("trade", ex, sym), encode(Trade(
                ex, sym, str(seq), Decimal(mids[sym]) / 100, Decimal(rnd.randint(1, 10_000)) / 10_000,
                rnd.choice(("buy", "sell")), t, t)))
        await pipe.execute()
        await asyncio.sleep(max(0.0, start + tick * TICK - time.monotonic()))
    await r.aclose()


# -- load clients ----------------------------------------------------------------------------------------


def load_process(url: str, n: int, offset: int, symbols: list[str], cmds: Any, results: Any,
                 kind: str = "raw", mix: str = "best_touch+trades") -> None:
    if kind == "node":
        _load_node(url, n, offset, symbols, cmds, results, mix)
    elif kind == "raw":
        try:
            import uvloop
        except ImportError:
            asyncio.run(_load_raw(url, n, offset, symbols, cmds, results, mix))
        else:
            uvloop.run(_load_raw(url, n, offset, symbols, cmds, results, mix))
    else:
        asyncio.run(_load(url, n, offset, symbols, cmds, results, mix))


BENCH_DIR = Path(__file__).resolve().parent


def node_ready() -> bool:
    """True when ``node`` can run ``bench/loadclient.js``: installs ``ws`` into the git-ignored
    ``bench/node_modules`` on first use (needs npm and the npm registry)."""
    if shutil.which("node") is None:
        return False
    if (BENCH_DIR / "node_modules" / "ws" / "package.json").exists():
        return True
    npm = shutil.which("npm")
    if npm is None:
        return False
    print("installing the ws package for the Node.js load clients into bench/node_modules", flush=True)
    r = subprocess.run([npm, "install", "--no-save", "--no-package-lock", "--no-audit", "--no-fund",
                        "--prefix", str(BENCH_DIR), "ws@8"], capture_output=True, timeout=300, check=False)
    return r.returncode == 0 and (BENCH_DIR / "node_modules" / "ws").exists()


def _load_node(url: str, n: int, offset: int, symbols: list[str], cmds: Any, results: Any, mix: str) -> None:
    """Relays the commands to ``node bench/loadclient.js`` (n clients) and its stats back."""
    import orjson

    with tempfile.NamedTemporaryFile("w", suffix=".tokens") as f:
        f.write("\n".join(tokens.issue(f"bench{offset + i}", SECRET, 3600) for i in range(n)))
        f.flush()
        proc = subprocess.Popen(["node", str(BENCH_DIR / "loadclient.js"), url, str(n), str(offset),
                                 ",".join(symbols), f.name, orjson.dumps(subscribe_messages(mix, "")).decode()],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            while True:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("node load client exited")
                if orjson.loads(line)["type"] == "ready":
                    break
            results.put(("ready", offset))
            while True:
                cmd = cmds.get()
                proc.stdin.write(f"{cmd}\n".encode())
                proc.stdin.flush()
                if cmd == "stop":
                    msg = orjson.loads(proc.stdout.readline())
                    results.put(("stats", {k: msg[k] for k in ("count", "lat", "secs", "cpu", "closed")}))
                elif cmd != "start":
                    break
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


async def _load_raw(url: str, n: int, offset: int, symbols: list[str], cmds: Any, results: Any, mix: str) -> None:
    """Load clients on ``bench.rawws``: frames parsed by hand, only sampled payloads looked into."""
    import orjson

    clients = [(f"{url}?token={tokens.issue(f'bench{i}', SECRET, 3600)}",
                [orjson.dumps(sub).decode() for sub in subscribe_messages(mix, symbols[i % len(symbols)])])
               for i in range(offset, offset + n)]
    await rawws.load_clients(clients, rawws.Stats(4), cmds, results, offset)


async def _load(url: str, n: int, offset: int, symbols: list[str], cmds: Any, results: Any, mix: str) -> None:
    import orjson
    from websockets.asyncio.client import connect

    state: dict[str, Any] = {"on": False, "count": 0, "lat": [], "closed": 0}
    key = '"ts_recv_us":'
    conns = []
    sem = asyncio.Semaphore(50)

    async def client(i: int) -> None:
        tok = tokens.issue(f"bench{i}", SECRET, 3600)
        sym = symbols[i % len(symbols)]
        async with sem:
            ws = await connect(f"{url}?token={tok}", max_queue=None, open_timeout=60, compression=None,
                               ping_interval=None)
            conns.append(ws)
            for sub in subscribe_messages(mix, sym):
                await ws.send(orjson.dumps(sub).decode())
        try:
            async for msg in ws:
                if state["on"]:
                    state["count"] += 1
                    p = msg.rfind(key)  # type: ignore[arg-type]
                    if p > 0 and state["count"] % 4 == 0:  # sample a quarter of the latencies
                        end = msg.find(",", p)  # type: ignore[arg-type]
                        end = msg.find("}", p) if end < 0 else end  # type: ignore[arg-type]
                        ts = int(msg[p + len(key):end])
                        if ts > 0:  # 0: a best touch with no quote yet
                            state["lat"].append(now_us() - ts)
        except Exception:  # noqa: BLE001 - a dropped client is counted, not fatal
            pass
        state["closed"] += 1

    tasks = [asyncio.create_task(client(offset + i)) for i in range(n)]
    loop = asyncio.get_running_loop()
    while len(conns) + state["closed"] < n:  # noqa: ASYNC110 - a simple start-up poll
        await asyncio.sleep(0.1)
    results.put(("ready", offset))
    while True:
        cmd = await loop.run_in_executor(None, cmds.get)
        if cmd == "start":
            state.update(on=True, count=0, lat=[], t0=time.monotonic(), cpu0=rawws.self_cpu())
        elif cmd == "stop":
            state["on"] = False
            results.put(("stats", {"count": state["count"], "lat": state["lat"], "secs": time.monotonic() - state["t0"],
                                   "cpu": rawws.self_cpu() - state["cpu0"], "closed": state["closed"]}))
        else:
            break
    for ws in conns:
        with contextlib.suppress(Exception):
            await ws.close()
    for t in tasks:
        t.cancel()


# -- gateway ---------------------------------------------------------------------------------------------

CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
                kids.setdefault(int(f[1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def proc_usage(pid: int) -> tuple[float, int, float]:
    """CPU seconds, RSS bytes and system (kernel) CPU seconds of a process and its descendants."""
    cpu, rss, sys_ = 0.0, 0, 0.0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(f[11]) + int(f[12])) / CLK
            sys_ += int(f[12]) / CLK
            rss += int(f[21]) * PAGE
    return cpu, rss, sys_


def machine_busy() -> float:
    """CPU seconds spent by the whole machine (every process, ours or not) since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / CLK


def start_gateway(redis_url: str, variant: str, workers: int, port: int, server: str,
                  cpus: set[int] | None = None, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": redis_url, "PORT": str(port), "JWT_SECRET": SECRET, "LOG_LEVEL": "WARNING",
           "SR_GATEWAY__WORKERS": str(workers), "SR_WS__QUEUE_MAX": "5000", **(extra_env or {})}
    cmd = [sys.executable, "-m", "gateway"]
    if server != "frames" or variant == "naive":  # uvicorn's own ws implementation, else as python -m gateway
        app = "bench.naive_fanout:create_app" if variant == "naive" else "gateway.app:create_app"
        ws = "websockets-sansio" if server == "frames" else server
        cmd = [sys.executable, "-m", "uvicorn", app, "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--ws", ws, "--ws-max-size", str(64 * 1024),
               "--ws-per-message-deflate", "false", "--log-level", "warning"]
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None  # workers inherit the affinity
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=pin)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                time.sleep(0.5 * workers)  # let every worker come up
                return proc
        if proc.poll() is not None:
            raise RuntimeError("gateway exited")
        time.sleep(0.2)
    stop_gateway(proc)
    raise RuntimeError("gateway did not start")


def stop_gateway(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# -- orchestration ---------------------------------------------------------------------------------------


def pct(xs: list[int], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1000


def run_phase(ctx: Any, url: str, gw: subprocess.Popen[bytes], redis_url: str, symbols: list[str], n: int,
              rates: list[float], procs: int, warmup: float, measure: float, kind: str,
              mix: str = "best_touch+trades") -> list[dict[str, Any]]:
    cmds = [ctx.Queue() for _ in range(procs)]
    results = ctx.Queue()
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    loaders = [ctx.Process(target=load_process, args=(url, per[i], sum(per[:i]), symbols, cmds[i], results, kind, mix),
                           daemon=True) for i in range(procs) if per[i]]
    for p in loaders:
        p.start()
    out = []
    try:
        for _ in loaders:
            results.get(timeout=120)
        for rate in rates:
            stop = ctx.Event()
            pub = ctx.Process(target=publisher, args=(redis_url, symbols, rate, stop), daemon=True)
            pub.start()
            time.sleep(warmup)
            cpu0, _, sys0 = proc_usage(gw.pid)
            box0 = machine_busy()
            t0 = time.monotonic()
            for q in cmds[:len(loaders)]:
                q.put("start")
            time.sleep(measure)
            for q in cmds[:len(loaders)]:
                q.put("stop")
            cpu1, rss, sys1 = proc_usage(gw.pid)
            box1 = machine_busy()
            secs = time.monotonic() - t0
            stats = [results.get(timeout=60)[1] for _ in loaders]
            stop.set()
            pub.join(10)
            lat = [x for s in stats for x in s["lat"]]
            count = sum(s["count"] for s in stats)
            gcpu = cpu1 - cpu0
            out.append({"mix": mix, "clients": n, "rate": rate, "msgs_s": count / secs, "p50_ms": pct(lat, 0.5),
                        "p99_ms": pct(lat, 0.99), "gw_cpu_s": gcpu / secs,
                        "gw_sys_pct": 100 * (sys1 - sys0) / gcpu if gcpu else 0, "msgs_per_cpu_s": count / gcpu if gcpu else 0,
                        "client_cpu_s": sum(s["cpu"] for s in stats) / secs, "box_cpu_s": (box1 - box0) / secs, "gw_rss_mb": rss / 2**20,
                        "dropped": sum(s["closed"] for s in stats)})
            time.sleep(1.0)
    finally:
        for q in cmds[:len(loaders)]:
            q.put("quit")
        for p in loaders:
            p.join(10)
            if p.is_alive():
                p.kill()
    return out


def soak(ctx: Any, url: str, gw: subprocess.Popen[bytes], redis_url: str, symbols: list[str], n: int,
         procs: int, seconds: float, kind: str) -> None:
    cmds = [ctx.Queue() for _ in range(procs)]
    results = ctx.Queue()
    per = [n // procs] * procs
    loaders = [ctx.Process(target=load_process, args=(url, per[i], i * per[0], symbols, cmds[i], results, kind),
                           daemon=True) for i in range(procs)]
    for p in loaders:
        p.start()
    for _ in loaders:
        results.get(timeout=120)
    stop = ctx.Event()
    pub = ctx.Process(target=publisher, args=(redis_url, symbols, 1.0, stop), daemon=True)
    pub.start()
    t0 = time.monotonic()
    print("  t(s)  gateway RSS (MB)")
    while time.monotonic() - t0 < seconds:
        time.sleep(min(30, seconds))
        print(f"  {time.monotonic() - t0:5.0f}  {proc_usage(gw.pid)[1] / 2**20:8.1f}", flush=True)
    stop.set()
    pub.join(10)
    for q in cmds:
        q.put("quit")
    for p in loaders:
        p.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="100,1000")
    ap.add_argument("--rates", default="1,10", help="multiples of the captures' rates")
    ap.add_argument("--variants", default="hub,naive")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gateway worker processes")
    ap.add_argument("--procs", type=int, default=max(2, os.cpu_count() or 2),
                    help="load-client processes (default: one per core, at least 2)")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--measure", type=float, default=8.0)
    ap.add_argument("--client", default="raw", choices=("raw", "node", "websockets"),
                    help="load client: raw (bench.rawws, the cheapest measured), node (bench/loadclient.js on the "
                         "ws package, installed on first use) or the websockets library")
    ap.add_argument("--server", default="frames", choices=("frames", "websockets-sansio", "websockets", "wsproto"),
                    help="uvicorn WebSocket implementation: frames (the gateway's own, gateway.realtime.server) or one of "
                         "uvicorn's (then frames go through ASGI send_text)")
    ap.add_argument("--mixes", default="best_touch+trades",
                    help="streams of each client, joined by +; several mixes (comma) are run one after the other")
    ap.add_argument("--pairs", type=int, default=0, help="put the clients on the first N pairs only (0: all)")
    ap.add_argument("--soak", type=float, default=0, help="instead: run N seconds at 1x and print gateway RSS")
    ap.add_argument("--pin", type=int, default=0, metavar="N",
                    help="pin the gateway to the first N cores and everything else (Redis, publisher, load clients) "
                         "to the others, so the load does not run on the gateway's cores (0: no pinning)")
    args = ap.parse_args()

    if args.client == "node" and not node_ready():
        raise SystemExit("node, npm or the ws package is not available: use --client raw (the default)")
    settings = load_settings(env={})
    symbols = list(settings.symbols)[:args.pairs or None]
    mixes = args.mixes.split(",")
    for mix in mixes:
        if any(st not in STREAMS for st in mix.split("+")):
            raise SystemExit(f"--mixes: unknown stream in {mix!r} (known: {', '.join(STREAMS)})")
    gw_cpus: set[int] | None = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) <= args.pin:
            raise SystemExit(f"--pin {args.pin} needs more than {args.pin} cores (have {len(cpus)})")
        gw_cpus = set(cpus[:args.pin])
        os.sched_setaffinity(0, set(cpus[args.pin:]))  # Redis, the publisher and the load processes inherit this
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        redis_url = os.environ.get("REDIS_URL", "")
        srv = None
        if not redis_url:
            srv = EmbeddedRedis(tmp, appendfsync="no").start()
            redis_url = srv.url
        try:
            print(f"cores={os.cpu_count()} pinned={'gateway on ' + str(sorted(gw_cpus)) if gw_cpus else 'no'} "
                  f"gateway workers={args.workers} load processes={args.procs} "
                  f"client={args.client} ws server={args.server} symbols={len(symbols)} 1x = {len(symbols) * (BBO_PER_S + TRADES_PER_S):.0f} msgs/s into Redis")
            rows = []
            for variant in args.variants.split(","):
                port = free_port()
                gw = start_gateway(redis_url, variant, args.workers, port, args.server, gw_cpus)
                url = f"ws://127.0.0.1:{port}/ws"
                try:
                    if args.soak:
                        soak(ctx, url, gw, redis_url, symbols, int(args.clients.split(",")[0]), args.procs, args.soak,
                             args.client)
                        continue
                    for mix, n in ((m, int(x)) for m in mixes for x in args.clients.split(",")):
                        if variant == "naive" and not set(mix.split("+")) <= {"best_touch", "trades"}:
                            print(f"naive serves best_touch and trades only: {mix} skipped", flush=True)
                            continue
                        for row in run_phase(ctx, url, gw, redis_url, symbols, n,
                                             [float(x) for x in args.rates.split(",")], args.procs, args.warmup,
                                             args.measure, args.client, mix):
                            row["variant"] = variant
                            rows.append(row)
                            print(fmt_row(row), flush=True)
                finally:
                    stop_gateway(gw)
            if rows:
                print("\n" + table(rows))
        finally:
            if srv:
                srv.stop()


HEAD = ("variant", "streams", "clients", "rate", "msgs/s", "p50 ms", "p99 ms", "gw CPU", "gw sys %", "msgs/CPU-s", "client CPU", "box CPU",
        "gw RSS MB", "dropped")


def fmt_row(r: dict[str, Any]) -> str:
    return (f"{r['variant']:>6} {r['mix']:>28} {r['clients']:>6} {r['rate']:>4.0f}x {r['msgs_s']:>9.0f} {r['p50_ms']:>8.1f} "
            f"{r['p99_ms']:>8.1f} {r['gw_cpu_s']:>6.2f} {r['gw_sys_pct']:>4.0f} {r['msgs_per_cpu_s']:>10.0f} {r['client_cpu_s']:>6.2f} "
            f"{r['box_cpu_s']:>6.2f} {r['gw_rss_mb']:>7.0f} {r['dropped']:>5}")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['mix']} | {r['clients']} | {r['rate']:.0f}x | {r['msgs_s']:.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['gw_cpu_s']:.2f} | {r['gw_sys_pct']:.0f} | {r['msgs_per_cpu_s']:.0f} | {r['client_cpu_s']:.2f} | "
                     f"{r['box_cpu_s']:.2f} | {r['gw_rss_mb']:.0f} | {r['dropped']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
