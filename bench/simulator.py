"""Simulator throughput: frames/s a client receives at x1 and at a given rate, and replay speed at --speed 0.

    python -m bench.simulator [--rate 10] [--seconds 5]

Rate x1 is the captures' flow per pair (``simulator.market``): Binance 81 bookTicker + 28.2 trade + 10 depth
frames/s, OKX 13 bbo-tbt + 6.4 trades + 10 books5 frames/s; ``--rate`` multiplies all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from shared.settings import load_settings
from simulator import Simulator
from simulator.market import Rates

CAPTURE = Path(__file__).resolve().parents[2] / "shared" / "exchange-captures" / "hftbacktest" / "btcusdt_20240808.gz"


async def count(ws: ClientConnection, seconds: float) -> int:
    n = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        n += 1
    return n


def describe(rate: float) -> str:
    """The per-pair rates the simulator runs at, as the bench states them."""
    r = Rates()
    books = 1000 / r.book_interval_ms * rate
    return (f"per pair: binance {r.quotes['binance'] * rate:g} bookTicker + {r.trades['binance'] * rate:g} trade"
            f" + {books:g} depth /s, okx {r.quotes['okx'] * rate:g} bbo-tbt + {r.trades['okx'] * rate:g} trades"
            f" + {books:g} books5 /s")


async def walk(rate: float, seconds: float) -> None:
    settings = load_settings(env={})
    async with Simulator(settings=settings, seed=1, rate=rate) as sim:
        streams = "/".join(f"{p.binance.lower()}@{k}" for p in settings.pairs
                           for k in ("bookTicker", "depth10@100ms", "trade"))
        args = ",".join(f'{{"channel":"{c}","instId":"{p.okx}"}}' for p in settings.pairs
                        for c in ("bbo-tbt", "books5", "trades"))
        async with connect(f"{sim.binance_url}/stream?streams={streams}", max_queue=None) as b, \
                connect(sim.okx_url, max_queue=None) as o:
            await o.send(f'{{"op":"subscribe","args":[{args}]}}')
            nb, no = await asyncio.gather(count(b, seconds), count(o, seconds))
        print(f"random walk, {len(settings.pairs)} pairs, rate x{rate:g} ({describe(rate)}): "
              f"binance {nb / seconds:,.0f} frames/s, okx {no / seconds:,.0f} frames/s, "
              f"dropped {sim.binance.frames_dropped + sim.okx.frames_dropped}")


async def replay() -> None:
    if not CAPTURE.exists():
        print(f"replay: skipped ({CAPTURE} not found)")
        return
    async with Simulator(settings=load_settings(env={}), replay=[CAPTURE], speed=0, replay_autostart=False) as sim:
        streams = "btcusdt@bookTicker/btcusdt@trade/btcusdt@depth@100ms"
        async with connect(f"{sim.binance_url}/stream?streams={streams}", max_queue=None) as ws:
            await sim.binance.wait_subscribed("btcusdt@trade")
            t0 = time.perf_counter()
            sim.start_replay()
            n = 0
            while not (sim.replay_done.is_set() and n >= sim.replayed_frames):
                try:
                    await asyncio.wait_for(ws.recv(), 2)
                except TimeoutError:
                    break
                n += 1
            dt = time.perf_counter() - t0
        print(f"replay --speed 0 of {CAPTURE.name}: {n:,} frames in {dt:.2f} s = {n / dt:,.0f} frames/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    asyncio.run(walk(1.0, a.seconds))
    asyncio.run(walk(a.rate, a.seconds))
    asyncio.run(replay())


if __name__ == "__main__":
    main()
