"""Ingest CPU per exchange frame over real sockets, against tardis-dev on the same frames, in one run.

    python -m bench.ingest_ratio [--speed S] [--rounds N] [--profile DIR]      # or: make bench-ingest-ratio

The simulator (in this process) replays the captures in ``../shared/exchange-captures`` over the real Binance
and OKX WebSocket protocols at S times the recorded pace (default 50: about 13,400 frames/s, the same for both
sides), or as fast as each client reads (``--speed 0``). Per exchange, N rounds (default 3) of two phases back
to back, ours and the reference (their order alternating), each with a fresh simulator; the ratio printed is the
median of the rounds' ratios:

1. ``python -m ingestor binance --pairs BTCUSDT`` (its own process, publishing into an embedded redis-server);
2. tardis-dev ``streamNormalized`` (trades + book tickers) for binance ``btcusdt``, a Node process;
3. and 4. the same for OKX (``BTC-USDT``).

``--profile DIR`` samples our ingestors with py-spy (``.venv/bin/pip install py-spy``) and prints where the CPU
goes by part (docs/ingestor.md).

Frames. Binance: the hftbacktest capture as recorded (``btcusdt@bookTicker`` and ``btcusdt@trade``, which both
sides subscribe to; its ``@depth@100ms`` diffs reach nobody). OKX: the cryptofeed OKX capture has no
``bbo-tbt`` and few ``trades``, so the same hftbacktest market is written as OKX ``bbo-tbt`` and ``trades`` push
frames (``bench.ingest.build_frames``) into a temporary replay file.

CPU is utime + stime of the client process (all its threads) from ``/proc/<pid>/stat``, from just before the
replay starts until the client is idle again after the last frame; divided by the frames replayed to it.
Each side must have received every frame: our ingestor's status hash (``frames``, ``msgs_bbo`` + ``msgs_trade``,
no rejections), tardis-dev's count of normalized messages.

tardis-dev is installed with npm into a temporary folder at each run (never in the repository) and pointed at
the simulator with its documented ``WSS_URL_<EXCHANGE>`` override (``OKX_USE_TRADES_CHANNEL=1`` keeps it on the
public ``trades`` channel the simulator serves, as our ingestor uses). The bench skips (exit 0, a message) when
the captures, node or npm are missing.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from asyncio.subprocess import DEVNULL, PIPE, Process
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.ingest import build_frames
from shared.embedded_redis import EmbeddedRedis
from shared.redis_conn import connect
from shared.settings import load_settings
from simulator.sim import Simulator

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "exchange-captures"
HFT = CAPTURES / "hftbacktest"
TARDIS = "tardis-dev@13"
MIN_RATE = 10_000
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[1]
OURS_FROM = REPO  # --ours-from: the checkout whose ``python -m ingestor`` runs (an earlier commit, for a before/after)
SYMBOL = "BTCUSDT"
TARDIS_SYMBOL = {"binance": "btcusdt", "okx": "BTC-USDT"}
TARDIS_EXCHANGE = {"binance": "binance", "okx": "okex"}

# Counts every normalized message; answers each line on stdin with the counts; exits when stdin closes.
NODE_SCRIPT = r"""
const { streamNormalized, normalizeTrades, normalizeBookTickers } = require('tardis-dev')
const [exchange, symbol] = process.argv.slice(2)
let trades = 0, quotes = 0, other = 0
require('readline').createInterface({ input: process.stdin })
  .on('line', () => process.stdout.write(`${trades} ${quotes} ${other}\n`))
  .on('close', () => process.exit(0))
;(async () => {
  const messages = streamNormalized({ exchange, symbols: [symbol], onError: (e) => console.error(String(e)) },
                                    normalizeTrades, normalizeBookTickers)
  for await (const m of messages) {
    if (m.type === 'trade') trades++
    else if (m.type === 'book_ticker') quotes++
    else other++
  }
})()
"""


@dataclass
class Result:
    exchange: str
    side: str
    frames: int
    received: int
    cpu_s: float
    replay_s: float
    round: int = 0

    @property
    def us_per_frame(self) -> float:
        return self.cpu_s / self.frames * 1e6

    @property
    def rate(self) -> float:
        return self.frames / self.replay_s


def cpu_s(pid: int) -> float:
    """utime + stime of every thread of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def child_pid(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return int(f.read().split()[0])


def binance_files() -> list[Path]:
    return sorted(HFT.glob("btcusdt_*.gz"))


def count_binance(files: list[Path]) -> int:
    n = 0
    for f in files:
        with gzip.open(f, "rb") as fh:
            for line in fh:
                if b'"stream":"btcusdt@bookTicker"' in line or b'"stream":"btcusdt@trade"' in line:
                    n += 1
    return n


def write_okx_file(f: Path, out: Path) -> int:
    """One hftbacktest file's market as OKX bbo-tbt / trades frames, as a replay file (``<ns> <json>`` lines)."""
    events: list[tuple[str, dict[str, object]]] = []
    stamps: list[bytes] = []
    with gzip.open(f, "rb") as fh:
        for line in fh:
            ts, _, raw = line.partition(b" ")
            o = orjson.loads(raw)
            stream = o.get("stream", "") if isinstance(o, dict) else ""
            kind = "bbo" if stream.endswith("@bookTicker") else "trade" if stream.endswith("@trade") else ""
            if kind:
                events.append((kind, o["data"]))
                stamps.append(ts)
    import random

    _, okx = build_frames(events, 5, random.Random(7))
    with open(out, "wb") as fh:
        for ts, frame in zip(stamps, okx, strict=True):
            fh.write(ts + b" " + frame + b"\n")
    return len(okx)


def install_tardis(tmp: Path) -> str:
    (tmp / "package.json").write_text('{"name": "ingest-ratio-ref", "private": true}')
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", TARDIS], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    (tmp / "ref.js").write_text(NODE_SCRIPT)
    version = json.loads((tmp / "node_modules" / "tardis-dev" / "package.json").read_text())["version"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return f"tardis-dev {version}, node {node}"


async def wait_idle(pid: int, quiet_s: float = 0.3) -> tuple[float, float]:
    """The process's CPU once it used (almost) none for ``quiet_s``, and when it was last busy (perf_counter)."""
    last, busy_until = cpu_s(pid), time.perf_counter()
    while True:
        await asyncio.sleep(quiet_s)
        now = cpu_s(pid)
        if now - last <= TICK_S:
            return now, busy_until
        last, busy_until = now, time.perf_counter()


async def run_phase(exchange: str, side: str, replay: list[Path], frames: int, speed: float, redis_url: str,
                    tardis_dir: Path, profile: Path | None) -> Result:
    settings = load_settings(env={"REDIS_URL": redis_url})
    sim = Simulator(settings=settings, replay=[str(p) for p in replay], speed=speed, walk=False,
                    replay_autostart=False, ping_interval=60.0, okx_idle_timeout=120.0, binance_msg_limit=50)
    async with sim:
        env = dict(os.environ, REDIS_URL=redis_url, BINANCE_WS_URL=sim.binance_url, OKX_WS_URL=sim.okx_url,
                   SR_METRICS__INGESTOR_BINANCE_PORT="0", SR_METRICS__INGESTOR_OKX_PORT="0", LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
                   WSS_URL_BINANCE=sim.binance_url + "/stream", WSS_URL_OKEX=sim.okx_url, OKX_USE_TRADES_CHANNEL="1")
        if side == "ours":
            cmd = [sys.executable, "-m", "ingestor", exchange, "--pairs", SYMBOL]
            if profile:  # py-spy samples from outside: the ingestor's own CPU is still what /proc gives for its pid
                cmd = [PY_SPY, "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", str(profile / f"{exchange}.txt"), "--", *cmd]
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=OURS_FROM, env=env, stdin=DEVNULL, stdout=DEVNULL)
        else:
            cmd = ["node", "ref.js", TARDIS_EXCHANGE[exchange], TARDIS_SYMBOL[exchange]]
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=tardis_dir, env=env, stdin=PIPE, stdout=PIPE)
        pid = proc.pid
        try:
            await subscribed(sim, exchange)
            await asyncio.sleep(1.0)  # settle: start-up work is not counted
            if side == "ours" and profile:
                pid = child_pid(proc.pid)
            c0 = cpu_s(pid)
            t0 = time.perf_counter()
            sim.start_replay()
            await asyncio.wait_for(sim.replay_done.wait(), 600)
            c1, busy_until = await wait_idle(pid)
            replay_s = busy_until - t0
            received = await (count_ours(redis_url, exchange) if side == "ours" else count_tardis(proc))
            server = sim.binance if exchange == "binance" else sim.okx
            if received != frames:  # whose fault: a slow reader (the simulator's queue overflowed) or a redial
                print(f"  {exchange} {side}: the simulator dropped {server.frames_dropped:,} frames for a slow "
                      f"reader; {server.connections_total} connection(s)")
        finally:
            if pid != proc.pid:
                os.kill(pid, signal.SIGTERM)  # the ingestor under py-spy; py-spy then writes its file and exits
                await asyncio.wait_for(proc.wait(), 30)
            await stop(proc)
    return Result(exchange, side, frames, received, c1 - c0, replay_s)


async def subscribed(sim: Simulator, exchange: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if exchange == "binance":
            subs = sim.binance.subscriptions()
            if {"btcusdt@bookTicker", "btcusdt@trade"} <= subs:
                return
        elif {("bbo-tbt", "BTC-USDT"), ("trades", "BTC-USDT")} <= sim.okx.subscriptions():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{exchange}: the client did not subscribe within {limit_s:.0f} s")


async def count_ours(redis_url: str, exchange: str) -> int:
    """Market-data messages our ingestor parsed and published (its status hash, once it stopped changing; one per
    frame here); -1 on any rejection, drop or Redis error."""
    redis = connect(redis_url)
    try:
        last: dict[str, str] = {}
        for _ in range(30):
            await asyncio.sleep(1.1)  # the hash is rewritten every second
            keys = [k async for k in redis.scan_iter(match=f"md:feed:{exchange}*")]
            raw = await redis.hgetall(keys[0]) if keys else {}
            h = {_text(k): _text(v) for k, v in raw.items()}
            if h and h == last:
                break
            last = h
        msgs = int(last.get("msgs_bbo", 0)) + int(last.get("msgs_trade", 0))
        if int(last.get("rejected", 0)) or int(last.get("dropped", 0)) or int(last.get("redis_errors", 0)):
            print(f"  {exchange} ingestor status: {last}")
            return -1
        return msgs
    finally:
        await redis.aclose()


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


async def count_tardis(proc: Process) -> int:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"\n")
    await proc.stdin.drain()
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    trades, quotes, _other = (int(x) for x in line.split())
    return trades + quotes


async def stop(proc: Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        if proc.stdin:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def skip_reason() -> str | None:
    if not binance_files():
        return f"the captures are not at {HFT}"
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (tardis-dev, the reference, runs on Node)"
    return None


# The part a sample belongs to: the first of these found anywhere in its stack (py-spy writes
# ``function (package/file.py:line)``). A stack that ends in ``Runner.run`` is in uvloop's C code: epoll, socket
# reads and writes, dispatch of callbacks.
PARTS = (("WebSocket client (websockets: frame parsing, assembly, recv)", "(websockets/"),
         ("parsing (orjson, Decimal, checks)", "Parser.parse ("),
         ("publishing (encode, batch, redis-py, socket write)", "(ingestor/publisher.py"),
         ("publishing (encode, batch, redis-py, socket write)", "(redis/"),
         ("status, stats, metrics (ingestor)", "(ingestor/"),
         ("status, stats, metrics (ingestor)", "(shared/"),
         ("event loop (Python asyncio)", "(asyncio/"))
LOOP_C = "event loop in C (uvloop: epoll, socket I/O, callback dispatch)"


def summarize_profile(path: Path, top: int = 12) -> None:
    """py-spy raw output (``frame;frame;... count``) after start-up: CPU by part, and the hottest leaf functions."""
    parts: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if "Runner.run (" not in stack or "importlib" in stack:
            continue  # start-up (imports, settings) is outside the measured window
        n = int(n_s)
        total += n
        frames = stack.split(";")
        inner = frames[frames.index(next(f for f in frames if f.startswith("Runner.run ("))) + 1:]
        part = next((name for name, pat in PARTS if any(pat in f for f in inner)), LOOP_C)
        parts[part] = parts.get(part, 0) + n
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + n
    if not total:
        return
    print(f"\n--- py-spy, our ingestor, {path.stem} ({total} samples after start-up) ---")
    for name, n in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * n / total:5.1f} %  {name}")
    print("  hottest innermost Python functions (their C calls included):")
    for fr, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / total:5.1f} %    {fr}")


def print_profile(profile: Path) -> None:
    for exchange in ("binance", "okx"):
        path = profile / f"{exchange}.txt"
        if path.exists():
            summarize_profile(path)


async def amain(speed: float, exchanges: list[str], profile: Path | None, rounds: int) -> int:
    reason = skip_reason()
    if reason:
        print(f"SKIP bench.ingest_ratio: {reason}")
        return 0
    files = binance_files()
    with tempfile.TemporaryDirectory(prefix="ingest-ratio-") as tmp_s:
        tmp = Path(tmp_s)
        versions = install_tardis(tmp)
        # One OKX file per Binance file: both replays have the same structure (files played side by side).
        okx_files = [tmp / f"okx_{f.name.removesuffix('.gz')}.txt" for f in files]
        okx_frames = sum(write_okx_file(f, out) for f, out in zip(files, okx_files, strict=True))
        plan = {"binance": (files, count_binance(files)), "okx": (okx_files, okx_frames)}
        print(f"{versions}; replay speed {speed or 'as fast as the client reads'}; frames: "
              + ", ".join(f"{ex} {plan[ex][1]:,}" for ex in exchanges))
        results: list[Result] = []
        (tmp / "redis").mkdir()
        with EmbeddedRedis(tmp / "redis", appendfsync="no") as srv:
            for exchange in exchanges:
                replay, frames = plan[exchange]
                for rnd in range(rounds):
                    # Ours and the reference back to back, their order alternating: a load that comes and goes
                    # on a shared machine weighs on both sides of a round alike.
                    sides = ("ours", "tardis-dev") if rnd % 2 == 0 else ("tardis-dev", "ours")
                    for side in sides:
                        r = await run_phase(exchange, side, replay, frames, speed, srv.url, tmp,
                                            profile if rnd == 0 else None)
                        r.round = rnd
                        results.append(r)
                        print(f"{exchange:8s} {side:10s} round {rnd + 1}: {r.received:,}/{r.frames:,} frames in "
                              f"{r.replay_s:.2f} s ({r.rate:,.0f} frames/s), CPU {r.cpu_s:.2f} s = "
                              f"{r.us_per_frame:.1f} µs/frame", flush=True)
    ok = True
    for exchange in exchanges:
        # A round counts only when both sides received every frame at the intended rate: a frame the simulator
        # dropped for a slow reader (a starved process on a loaded machine) is CPU not spent.
        ratios: list[float] = []
        good: list[Result] = []
        for rnd in range(rounds):
            ours, ref = (next(r for r in results if r.exchange == exchange and r.round == rnd and r.side == side)
                         for side in ("ours", "tardis-dev"))
            complete = ours.received == ours.frames and ref.received == ref.frames
            fast = min(ours.rate, ref.rate) >= MIN_RATE
            if complete and fast:
                ratios.append(ours.us_per_frame / ref.us_per_frame)
                good += [ours, ref]
            else:
                print(f"  {exchange} round {rnd + 1} left out: " + ("" if complete else "not every frame received; ")
                      + ("" if fast else f"rate below {MIN_RATE:,}/s"))
        if not ratios:
            ok = False
            print(f"RESULT {exchange:8s} no complete round")
            continue
        ratio = statistics.median(ratios)
        ours_us = statistics.median(r.us_per_frame for r in good if r.side == "ours")
        ref_us = statistics.median(r.us_per_frame for r in good if r.side == "tardis-dev")
        print(f"RESULT {exchange:8s} ours {ours_us:.1f} µs/frame, tardis-dev {ref_us:.1f} µs/frame (medians); "
              f"ratio {ratio:.2f}x, median of {len(ratios)} complete round(s): {', '.join(f'{x:.2f}' for x in ratios)} "
              f"(target <= 1.0x: {'OK' if ratio <= 1.0 else 'ABOVE'})")
    if profile:
        print_profile(profile)
    return 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.ingest_ratio", description=__doc__.split("\n\n")[0])
    ap.add_argument("--speed", type=float, default=50.0,
                    help="replay speed (50: ~13,400 frames/s, the same for both sides); 0 = as fast as each reads")
    ap.add_argument("--exchanges", default="binance,okx")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per exchange (ours and tardis-dev back to back); the ratio is their median")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="sample our ingestors with py-spy, keep <exchange>.txt in DIR and print where the time goes")
    ap.add_argument("--ours-from", type=Path, default=None, metavar="DIR",
                    help="run our ingestor from this checkout (e.g. `git worktree add --detach /tmp/before <commit>`)")
    args = ap.parse_args()
    if args.ours_from:
        global OURS_FROM
        OURS_FROM = args.ours_from.resolve()
    if args.profile:
        if not Path(PY_SPY).exists():
            ap.error(f"--profile needs py-spy next to the interpreter ({PY_SPY}): .venv/bin/pip install py-spy")
        args.profile.mkdir(parents=True, exist_ok=True)
    raise SystemExit(asyncio.run(amain(args.speed, args.exchanges.split(","), args.profile, args.rounds)))


if __name__ == "__main__":
    main()
