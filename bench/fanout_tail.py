"""One client's tail with every stream kind: ``python -m bench.fanout_tail [--seconds 20] [--rounds 2]``
(``make bench-fanout-tail``).

One run starts an embedded redis-server, the gateway (``python -m gateway``, one worker) and the feed of
``bench.fanout.publisher`` (published into Redis as the ingestors do, at the hftbacktest captures' rates: ~80 bbo/s +
~27 trades/s per pair, 5 pairs, ``ts_recv_us`` = publish time). Then, interleaved for ``--rounds`` rounds, one
client (``bench.rawws``, in this process) at a time:

- ``plain``: best_touch and trades of BTCUSDT (exchange ``all``), the reference;
- ``every``: the same plus klines 1s, 10s, 1m and 5m (their history sent at subscription) and an EWMA (30 s).

Tick-to-client latency = receive time - ``ts_recv_us`` of every best_touch and trades message (klines are left out:
their ``ts_recv_us`` is that of the candle's last trade); p50, p99 and the worst per phase, and the ratio of the
``every`` p99 to the ``plain`` p99 of the same run. Target: ``every`` p99 < 5 ms. ``--py-spy FILE`` records the
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
from typing import Any

import orjson

from bench import rawws
from bench.fanout import SECRET, publisher
from bench.orders import pct, spawn, stop_procs, wait_port
from shared import tokens
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.settings import load_settings

SYMBOL = "BTCUSDT"
PLAIN = [{"stream": "best_touch"}, {"stream": "trades"}]
EVERY = PLAIN + [{"stream": "klines", "interval": iv} for iv in ("1s", "10s", "1m", "5m")] + [
    {"stream": "ewma", "half_life": 30}]
TIMED = (b"best_touch", b"trades")


async def phase(url: str, subs: list[dict[str, Any]], warmup: float, seconds: float) -> dict[bytes, list[int]]:
    st = rawws.Stats(1, by_type=True)
    c = await rawws.connect(url, st)
    try:
        for i, s in enumerate(subs):
            c.send_text(orjson.dumps({"action": "subscribe", "id": i, "symbol": SYMBOL, "exchange": "all", **s}).decode())
        await asyncio.sleep(warmup)
        st.on = True
        await asyncio.sleep(seconds)
        st.on = False
        if c.done.done():
            raise RuntimeError("the client was disconnected")
        assert st.by_type is not None
        return st.by_type
    finally:
        c.close()


def line(name: str, lat: dict[bytes, list[int]]) -> tuple[str, float]:
    timed = [x for k in TIMED for x in lat.get(k, [])]
    p99 = pct(timed, 99) / 1000
    counts = ", ".join(f"{k.decode()} {len(v)}" for k, v in sorted(lat.items()))
    return (f"  {name:<6} best_touch+trades p50 {pct(timed, 50) / 1000:6.2f} ms  p99 {p99:6.2f} ms  "
            f"max {max(timed) / 1000:7.2f} ms   (messages: {counts})"), p99


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=float, default=1.0, help="multiple of the captures' rates")
    ap.add_argument("--py-spy", default="", metavar="FILE", help="record the gateway during the first 'every' phase")
    args = ap.parse_args()
    print(f"one client, tick-to-client latency (python -m bench.fanout_tail --seconds {args.seconds:g} "
          f"--rounds {args.rounds} --rate {args.rate:g})", flush=True)
    symbols = list(load_settings(env={}).symbols)
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
            pub.start()
            url = f"ws://127.0.0.1:{port}/ws?token={tokens.issue('tail', SECRET, 3600)}"
            await asyncio.sleep(2.0)  # the feed is live, candles exist
            p99s: dict[str, list[float]] = {"plain": [], "every": []}
            for r in range(args.rounds):
                for name, subs in (("plain", PLAIN), ("every", EVERY)):
                    if name == "every" and args.py_spy and spy is None:
                        exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
                        spy = subprocess.Popen([exe, "record", "--pid", str(gw.pid), "--rate", "250",  # noqa: ASYNC220
                                                "--duration", str(int(args.warmup + args.seconds)),
                                                "-o", args.py_spy, "--format", os.environ.get("PYSPY_FORMAT", "flamegraph"), "--nonblocking"],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    lat = await phase(url, subs, args.warmup, args.seconds)
                    text, p99 = line(f"{name}", lat)
                    p99s[name].append(p99)
                    print(f"round {r + 1}" + text, flush=True)
            plain, every = statistics.median(p99s["plain"]), statistics.median(p99s["every"])
            print(f"RESULT every-stream client p99 {every:.2f} ms (target < 5 ms), best_touch+trades-only client "
                  f"p99 {plain:.2f} ms in the same run: {every / plain:.2f}x (medians of {args.rounds} rounds)")
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
