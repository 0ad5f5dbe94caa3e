"""One client's tail with every stream kind: ``python -m bench.fanout_tail [--seconds 20] [--rounds 2]``
(``make bench-fanout-tail``).

One run starts an embedded redis-server, the gateway (``python -m gateway``, one worker) and the feed of
``bench.fanout.publisher`` (published into Redis as the ingestors do, at the hftbacktest captures' rates: ~80 bbo/s +
~27 trades/s per pair, 5 pairs, ``ts_recv_us`` = publish time). Then, interleaved for ``--rounds`` rounds, one
client (``bench.rawws``, in this process) at a time:

- ``plain``: best_touch and trades of BTCUSDT (exchange ``all``), the reference;
- ``every``: the same plus klines 1s, 10s, 1m and 5m (their history sent at subscription) and an EWMA (30 s);
- ``churn``: ``every`` while another client subscribes to the four kline intervals and an EWMA of the same pair and
  unsubscribes, once a second (each subscription sends up to ``ws.kline_history`` candles of history).

Before the phases, ``--preroll`` seconds of past trades (one a second) are published, so the candles have the
history of a gateway running that long (300 closed 1 s candles, 60 of 10 s...).

Tick-to-client latency = receive time - ``ts_recv_us`` of every best_touch and trades message from the moment the
client subscribes (klines are left out: their ``ts_recv_us`` is that of the candle's last trade); p50, p99 and the worst per phase, and the ratio of the
``every`` and ``churn`` p99 to the ``plain`` p99 of the same run. Target: ``every`` p99 < 5 ms. ``--py-spy FILE`` records the
gateway with py-spy (not a dependency: ``pip install py-spy`` into the venv) during the ``every`` phases.
Figures, not assertions: no test checks a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench import rawws
from bench.fanout import SECRET, publisher
from bench.orders import pct, spawn, stop_procs, wait_port
from shared import names, tokens
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.schema import Trade, encode
from shared.settings import load_settings

SYMBOL = "BTCUSDT"
PLAIN = [{"stream": "best_touch"}, {"stream": "trades"}]
EVERY = PLAIN + [{"stream": "klines", "interval": iv} for iv in ("1s", "10s", "1m", "5m")] + [
    {"stream": "ewma", "half_life": 30}]
TIMED = (b"best_touch", b"trades")


def py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` for ``seconds`` into ``out`` (a flame graph; ``.txt``: collapsed stacks)."""
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    fmt = "raw" if out.endswith(".txt") else "flamegraph"
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "250", "--duration", str(int(seconds)),
                             "-o", out, "--format", fmt, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sub_text(action: str, s: dict[str, Any], id_: int) -> str:
    return orjson.dumps({"action": action, "id": id_, "symbol": SYMBOL, "exchange": "all", **s}).decode()


async def churn(url: str, stop: asyncio.Event) -> int:
    """Another client subscribing to every kline interval and an EWMA, then unsubscribing, once a second."""
    c = await rawws.connect(url, rawws.Stats(1 << 30))
    n = 0
    try:
        subs = EVERY[2:]
        while not stop.is_set():
            for i, s in enumerate(subs):
                c.send_text(sub_text("subscribe", s, i))
            await asyncio.sleep(0.5)
            for i, s in enumerate(subs):
                c.send_text(sub_text("unsubscribe", s, i))
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        if c.done.done():
            raise RuntimeError("the churning client was disconnected")
        return n
    finally:
        c.close()


async def phase(url: str, subs: list[dict[str, Any]], seconds: float, with_churn: bool) -> dict[bytes, list[int]]:
    """Latencies from the subscription on (so what subscribing costs the client is in), by message type."""
    st = rawws.Stats(1, by_type=True)
    c = await rawws.connect(url, st)
    stop = asyncio.Event()
    churner = asyncio.create_task(churn(url, stop)) if with_churn else None
    try:
        st.on = True
        for i, s in enumerate(subs):
            c.send_text(sub_text("subscribe", s, i))
        await asyncio.sleep(seconds)
        st.on = False
        if c.done.done():
            raise RuntimeError("the client was disconnected")
        assert st.by_type is not None
        return st.by_type
    finally:
        stop.set()
        if churner is not None:
            await churner
        c.close()


async def preroll(redis_url: str, seconds: int) -> None:
    """Trades of the last ``seconds`` (one a second, exchange time in the past) for every symbol, so the gateway's
    candles have a history to send a new subscriber, as after running that long."""
    r = aioredis.Redis.from_url(redis_url)
    now = time.time_ns() // 1000
    pipe = r.pipeline(transaction=False)
    for k in range(seconds, 0, -1):
        ts = now - k * 1_000_000
        for n, sym in enumerate(symbols_of()):
            pipe.publish(names.md_channel("trade", "binance", sym), encode(Trade(
                "binance", sym, f"pre{k}", Decimal(1000 + 1000 * n) / 100 + Decimal(k % 7) / 100, Decimal("0.01"),
                "buy", ts, ts)))
    await pipe.execute()
    await r.aclose()


def symbols_of() -> list[str]:
    return list(load_settings(env={}).symbols)


def line(name: str, lat: dict[bytes, list[int]]) -> tuple[str, float]:
    timed = [x for k in TIMED for x in lat.get(k, [])]
    p99 = pct(timed, 99) / 1000
    counts = ", ".join(f"{k.decode()} {len(v)}" for k, v in sorted(lat.items()))
    return (f"  {name:<6} best_touch+trades p50 {pct(timed, 50) / 1000:6.2f} ms  p99 {p99:6.2f} ms  "
            f"max {max(timed) / 1000:7.2f} ms   (messages: {counts})"), p99


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase")
    ap.add_argument("--preroll", type=int, default=600, help="seconds of past trades published first")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=float, default=1.0, help="multiple of the captures' rates")
    ap.add_argument("--py-spy", default="", metavar="FILE",
                    help="record the gateway during the first 'every' phase (FILE.svg, or FILE.txt: collapsed stacks)")
    args = ap.parse_args()
    print(f"one client, tick-to-client latency (python -m bench.fanout_tail --seconds {args.seconds:g} "
          f"--rounds {args.rounds} --rate {args.rate:g} --preroll {args.preroll}); load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    symbols = symbols_of()
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedRedis(tmp, appendfsync="no").start()
        port = free_port()
        env = {**os.environ, "REDIS_URL": srv.url, "JWT_SECRET": SECRET, "PORT": str(port), "LOG_LEVEL": "WARNING",
               "SR_GATEWAY__WORKERS": "1"}
        gw = spawn("gateway", env)
        pub = ctx.Process(target=publisher, args=(srv.url, symbols, args.rate, stop), daemon=True)
        spy: subprocess.Popen[bytes] | None = None
        try:
            await wait_port(port)
            await asyncio.sleep(1.0)  # the gateway's trade channels are subscribed at start
            await preroll(srv.url, args.preroll)
            pub.start()
            url = f"ws://127.0.0.1:{port}/ws?token={tokens.issue('tail', SECRET, 3600)}"
            await asyncio.sleep(2.0)  # the feed is live, candles exist
            p99s: dict[str, list[float]] = {"plain": [], "every": [], "churn": []}
            for r in range(args.rounds):
                for name, subs in (("plain", PLAIN), ("every", EVERY), ("churn", EVERY)):
                    if name == "every" and args.py_spy and spy is None:
                        spy = py_spy(gw.pid, args.seconds, args.py_spy)
                    lat = await phase(url, subs, args.seconds, name == "churn")
                    text, p99 = line(f"{name}", lat)
                    p99s[name].append(p99)
                    print(f"round {r + 1}" + text, flush=True)
            plain, every, churned = (statistics.median(p99s[k]) for k in ("plain", "every", "churn"))
            print(f"RESULT every-stream client p99 {every:.2f} ms (target < 5 ms), with another client churning "
                  f"subscriptions {churned:.2f} ms; best_touch+trades-only client p99 {plain:.2f} ms in the same run: "
                  f"{every / plain:.2f}x and {churned / plain:.2f}x (medians of {args.rounds} rounds; load average "
                  f"{os.getloadavg()[0]:.1f})")
        finally:
            if spy is not None:
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
            stop.set()
            if pub.is_alive():
                pub.join(10)
            stop_procs([gw])
            srv.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
