"""Recording's effect on tick-to-client latency: the same run with recording off and on, alternating.

    python -m bench.recording                          # 4 phases of 30 s (off, on, off, on), simulator x5
    python -m bench.recording --seconds 900 --rounds 2 --rate 1   # an hour of the simulator's real flow

The simulator (``python -m simulator --rate R``) feeds both ingestors (``python -m ingestor``), restarted for each
phase with ``SR_RECORDING__ENABLED`` off or on, into an embedded redis-server; one gateway (``python -m gateway``);
this process is a client subscribed to the trades of every pair (exchange ``all``). Per trade:

- *tick-to-client*: client receive time - the exchange time the simulator put in the frame (ms resolution: Binance
  ``T``, OKX ``ts``), so it includes the ingestor's socket read, which a writer thread could delay;
- *ingestor-to-client*: client receive time - ``ts_recv_us`` (µs).

It prints the median and p99 of each phase, the ingestors' CPU per frame, and the ratios on / off (the phases are
interleaved so that the machine's other load falls on both alike).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from bench.orders import cpu_s, pct, stop_procs
from shared import tokens
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.settings import ROOT, load_settings

SECRET = "bench-recording-secret-0123456789abcdef"


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


async def wait_http(port: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


async def collect(port: int, symbols: list[str], seconds: float, settle: float) -> tuple[list[float], list[float]]:
    tok = tokens.issue("bench", SECRET, 3600)
    tick: list[float] = []
    ing: list[float] = []
    async with connect(f"ws://127.0.0.1:{port}/ws?token={tok}", max_queue=None) as ws:
        for s in symbols:
            await ws.send(orjson.dumps({"action": "subscribe", "stream": "trades", "symbol": s,
                                        "exchange": "all"}).decode())
        t_start = time.monotonic() + settle
        t_end = t_start + seconds
        while (left := t_end - time.monotonic()) > 0:
            try:
                raw = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            now = time.time_ns() // 1000
            m = orjson.loads(raw)
            if m.get("type") != "trades" or time.monotonic() < t_start:
                continue
            d = m["data"]
            tick.append((now - d["ts_event_us"]) / 1000)
            ing.append((now - d["ts_recv_us"]) / 1000)
    return tick, ing


def summary(xs: list[float]) -> tuple[float, float]:
    return (pct(xs, 50), pct(xs, 99)) if xs else (float("nan"), float("nan"))


async def amain(seconds: float, rounds: int, rate: float, settle: float) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-recording-"))
    redis = EmbeddedRedis(tmp / "redis", appendfsync="no").start()
    settings = load_settings()
    symbols = list(settings.symbols)
    bport, oport, gport = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SR_")}
    env.update(REDIS_URL=redis.url, JWT_SECRET=SECRET, PORT=str(gport), LOG_LEVEL="WARNING",
               BINANCE_WS_URL=f"ws://127.0.0.1:{bport}", OKX_WS_URL=f"ws://127.0.0.1:{oport}/ws/v5/public",
               SR_METRICS__INGESTOR_BINANCE_PORT="0", SR_METRICS__INGESTOR_OKX_PORT="0",
               SR_RECORDING__DIR=str(tmp / "recordings"), SR_RECORDING__RETENTION_DAYS="0")
    sim = spawn(["-m", "simulator", "--binance-port", str(bport), "--okx-port", str(oport), "--rate", str(rate),
                 "--seed", "1"], env, tmp / "simulator.log")
    gw = spawn(["-m", "gateway"], env, tmp / "gateway.log")
    results: dict[bool, list[tuple[list[float], list[float], float, int]]] = {False: [], True: []}
    try:
        await wait_http(bport)
        await wait_http(gport)
        for r in range(rounds):
            for on in (False, True):
                penv = dict(env, SR_RECORDING__ENABLED="true" if on else "false")
                ings = [spawn(["-m", "ingestor", ex], penv, tmp / f"ingestor-{ex}.log") for ex in ("binance", "okx")]
                try:
                    await asyncio.sleep(1.0)
                    cpu0 = cpu_s([p.pid for p in ings])
                    tick, ing = await collect(gport, symbols, seconds, settle)
                    cpu = cpu_s([p.pid for p in ings]) - cpu0
                finally:
                    stop_procs(ings)
                results[on].append((tick, ing, cpu, len(tick)))
                t50, t99 = summary(tick)
                i50, i99 = summary(ing)
                print(f"round {r + 1} recording {'on ' if on else 'off'}: {len(tick):,} trades; tick-to-client "
                      f"p50 {t50:.2f} ms p99 {t99:.2f} ms; ingestor-to-client p50 {i50:.3f} ms p99 {i99:.3f} ms; "
                      f"ingestors {cpu:.1f} CPU-s", flush=True)
    finally:
        stop_procs([gw, sim])
        redis.stop()
    size = sum(p.stat().st_size for p in (tmp / "recordings").rglob("*.rec.gz"))
    print(f"recorded {size / 1e6:.1f} MB (gzip) in {tmp / 'recordings'}")

    def agg(on: bool) -> tuple[float, float, float, float, float]:
        tick = [x for t, _, _, _ in results[on] for x in t]
        ing = [x for _, i, _, _ in results[on] for x in i]
        cpu = sum(c for _, _, c, _ in results[on])
        n = sum(k for _, _, _, k in results[on])
        return (*summary(tick), *summary(ing), cpu / max(1, n) * 1e6)
    off, on = agg(False), agg(True)
    names = ("tick-to-client p50", "tick-to-client p99", "ingestor-to-client p50", "ingestor-to-client p99",
             "ingestor CPU per trade delivered (µs, both ingestors, every frame)")
    for name, a, b in zip(names, off, on, strict=True):
        print(f"RESULT {name}: off {a:.3f}, on {b:.3f}, on/off = {b / a:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.recording", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (off, on)")
    ap.add_argument("--rate", type=float, default=5.0, help="the simulator's --rate")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds left out at the start of each phase")
    args = ap.parse_args()
    sys.exit(asyncio.run(amain(args.seconds, args.rounds, args.rate, args.settle)))


if __name__ == "__main__":
    main()
