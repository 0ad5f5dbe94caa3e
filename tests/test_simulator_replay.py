"""Replay of the real captures through the simulator (skipped when ../shared/exchange-captures is absent)."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from simulator.replay import read_frames
from tests.simtools import recv_until, running

pytestmark = pytest.mark.captures


async def drain(ws, until: asyncio.Event, idle: float = 1.0) -> list[str]:  # type: ignore[no-untyped-def]
    out: list[str] = []
    while True:
        try:
            out.append(await asyncio.wait_for(ws.recv(), idle))
        except TimeoutError:
            if until.is_set():
                return out


async def test_binance_capture_passes_through_combined_frames(captures_dir: Path) -> None:
    path = captures_dir / "hftbacktest" / "btcusdt_20240808.gz"
    with gzip.open(path, "rt") as f:
        expected = [line.split(" ", 1)[1].strip() for line in f if '"stream":"btcusdt@trade"' in line]
    async with running(replay=[path], speed=0) as sim:
        async with connect(f"{sim.binance_url}/stream?streams=btcusdt@trade", max_queue=None) as ws:
            got = await drain(ws, sim.replay_done)
    assert got == expected  # byte for byte, in order, nothing dropped
    assert sim.binance.frames_dropped == 0
    assert sim.replayed_frames == 41248  # the REST snapshot line is not a stream frame


async def test_okx_and_binance_cryptofeed_captures_at_high_speed(captures_dir: Path) -> None:
    okx_path = captures_dir / "cryptofeed" / "OKX.ws.1.0"
    bin_path = captures_dir / "cryptofeed" / "BINANCE.ws.1.0"
    want_okx = [fr.raw for fr in read_frames(okx_path) if fr.key == ("trades", "BTC-USDT")]
    want_bin = [fr.data for fr in read_frames(bin_path) if fr.key == "nknusdt@bookTicker"]
    assert want_okx and want_bin
    async with running(replay=[okx_path, bin_path], speed=0, replay_autostart=False) as sim:
        async with connect(sim.okx_url) as o, connect(f"{sim.binance_url}/ws/nknusdt@bookTicker") as b:
            await o.send('{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}')
            await recv_until(o, lambda m: m.get("event") == "subscribe")
            await sim.binance.wait_subscribed("nknusdt@bookTicker")
            sim.start_replay()
            got_b = await drain(b, sim.replay_done, idle=0.3)
            got_o = await drain(o, sim.replay_done, idle=0.3)
    assert [g.encode() for g in got_b] == want_bin  # raw endpoint: the payload without the wrapper
    assert [g.encode() for g in got_o] == want_okx  # OKX push frames pass through as recorded
    assert all(orjson.loads(g)["arg"] == {"channel": "trades", "instId": "BTC-USDT"} for g in got_o)


async def test_replay_keeps_recorded_gaps_scaled_by_speed(captures_dir: Path) -> None:
    path = captures_dir / "cryptofeed" / "BINANCE.ws.1.0"
    frames = [fr for fr in read_frames(path) if fr.key == "nknusdt@depth@100ms"][:5]
    span_s = (frames[-1].ts_us - frames[0].ts_us) / 1e6
    assert span_s > 0.3
    async with running(replay=[path], speed=2) as sim:
        async with connect(f"{sim.binance_url}/stream?streams=nknusdt@depth@100ms") as ws:
            loop = asyncio.get_running_loop()
            got = [await recv_until(ws, lambda m: "stream" in m)]
            t0 = loop.time()
            while len(got) < 5:
                got.append(await recv_until(ws, lambda m: "stream" in m))
            elapsed = loop.time() - t0
    assert [g["data"] for g in got] == [orjson.loads(fr.data) for fr in frames]  # type: ignore[arg-type]
    assert elapsed >= 0.9 * span_s / 2  # never ahead of the recorded clock
