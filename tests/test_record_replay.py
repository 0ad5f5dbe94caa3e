"""Record, then replay through the whole system: the simulator's walk -> ingestors recording their raw frames ->
(later) the recording replayed by the simulator at x20 -> the unchanged ingestors -> Redis (space ``replay``) ->
the gateway's klines. Every trade, best bid/ask and book of each exchange comes out in the same order with the same
values, and the candles the gateway builds on the replay equal those built from the live trades.

``SR_TEST_RECORD_S`` sets how long the walk is recorded (default 20 s)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from recorder import store
from shared.klines import KlineBuilder
from shared.schema import BBO, Book, Message, Trade
from tests.e2etools import MdSink, ingestor_processes, wait_until
from tests.gateway_proc import gateway_process
from tests.servers import CLUSTER_PASS
from tests.simtools import running
from tests.wsclient import token, ws_url

RECORD_S = float(os.environ.get("SR_TEST_RECORD_S", "20"))
PAIRS = ("BTCUSDT", "ETHUSDT")
S = 1_000_000

pytestmark = pytest.mark.skipif(CLUSTER_PASS, reason="single-server pattern subscriptions")


def per_stream(items: list[tuple[str, Message]]) -> dict[tuple[str, str, str], list[tuple[Any, ...]]]:
    """Each exchange's messages per pair and kind, in order, by their values (receive times left out, and Binance
    bookTicker's event time, which is its receive time)."""
    out: dict[tuple[str, str, str], list[tuple[Any, ...]]] = defaultdict(list)
    for _, m in items:
        if isinstance(m, Trade):
            out[(m.exchange, m.symbol, "trade")].append((m.trade_id, m.price, m.size, m.side, m.ts_event_us))
        elif isinstance(m, BBO):
            ev = m.ts_event_us if m.exchange == "okx" else 0
            out[(m.exchange, m.symbol, "bbo")].append((m.bid_px, m.bid_sz, m.ask_px, m.ask_sz, m.seq, ev))
        elif isinstance(m, Book):
            out[(m.exchange, m.symbol, "book")].append((m.bids, m.asks, m.seq))
    return out


def candles_of(items: list[tuple[str, Message]], exchange: str, symbol: str) -> list[tuple[Any, ...]]:
    b = KlineBuilder(S, history=100_000)
    closed = []
    for _, m in items:
        if isinstance(m, Trade) and m.exchange == exchange and m.symbol == symbol:
            closed += b.add(m.price, m.size, m.ts_event_us, m.ts_recv_us)
    return [(c.open_time_us, c.open, c.high, c.low, c.close, c.volume, c.trades) for c in closed]


async def read_klines(base: str, subs: list[tuple[str, str]], got: dict[tuple[str, str], dict[int, Any]],
                      ready: asyncio.Event) -> None:
    async with connect(ws_url(base) + f"?token={token('replayer')}", max_queue=None) as ws:
        for sym, ex in subs:
            await ws.send(orjson.dumps({"action": "subscribe", "stream": "klines", "symbol": sym, "exchange": ex,
                                        "interval": "1s"}).decode())
        acks = 0
        async for raw in ws:
            m = orjson.loads(raw)
            if m.get("type") == "ack":
                acks += 1
                if acks == len(subs):
                    ready.set()
            elif m.get("type") == "error":
                raise AssertionError(m)
            elif m.get("type") == "klines" and m["data"]["closed"]:
                d = m["data"]
                got[(d["symbol"], d["exchange"])][d["open_time_us"]] = (
                    d["open_time_us"], Decimal(str(d["open"])), Decimal(str(d["high"])), Decimal(str(d["low"])),
                    Decimal(str(d["close"])), Decimal(str(d["volume"])), d["trades"])


async def test_a_recording_replayed_at_x20_reproduces_the_feed_and_the_candles(
        redis_url: str, tmp_path: Path) -> None:
    rec_dir = tmp_path / "recordings"
    common = {"SR_INGESTOR__PAIRS": ",".join(PAIRS)}
    # -- record: the walk, live ----------------------------------------------------------------------------
    async with running(seed=11) as sim, MdSink.open(redis_url, "md:*") as live:
        async with ingestor_processes(redis_url, sim, tmp_path, SR_RECORDING__ENABLED="true",
                                      SR_RECORDING__DIR=str(rec_dir), SR_RECORDING__RETENTION_DAYS="0", **common):
            await asyncio.sleep(RECORD_S)
        await asyncio.sleep(0.3)  # the last published messages on their way to the sink
    live_streams = per_stream(live.items)
    files = store.recording_files(rec_dir)
    assert {f.parent.parent.name for f in files} == {"binance", "okx"}
    for ex in ("binance", "okx"):
        for sym in PAIRS:
            assert len(live_streams[(ex, sym, "trade")]) > 10 and len(live_streams[(ex, sym, "bbo")]) > 10
    n_trades = sum(len(v) for k, v in live_streams.items() if k[2] == "trade")

    # -- replay at x20 in the space 'replay' ----------------------------------------------------------------
    space = {"SR_SPACE": "replay", "SR_WS__KLINE_CLOCK": "trades"}
    subs = [(sym, ex) for sym in PAIRS for ex in ("binance", "okx")]
    got: dict[tuple[str, str], dict[int, Any]] = defaultdict(dict)
    with gateway_process(redis_url, tmp_path, **space, SR_WS__KLINE_HISTORY="100000") as gw:
        async with running(replay=[rec_dir], speed=20, replay_autostart=False, walk=False) as sim, \
                MdSink.open(redis_url, "replay:md:*") as replayed:
            ready = asyncio.Event()
            reader = asyncio.create_task(read_klines(gw.url, subs, got, ready))
            try:
                await asyncio.wait_for(ready.wait(), 10)
                logs = tmp_path / "replay"
                logs.mkdir()
                async with ingestor_processes(redis_url, sim, logs, **space, **common):
                    for sym in PAIRS:
                        await sim.binance.wait_subscribed(f"{sym.lower()}@trade", within=20)
                        await sim.okx.wait_subscribed(("trades", sym[:3] + "-USDT"), within=20)
                    sim.start_replay()
                    await asyncio.wait_for(sim.replay_done.wait(), RECORD_S + 60)

                    def trades_in() -> bool:
                        return sum(1 for _, m in replayed.items if isinstance(m, Trade)) >= n_trades
                    await wait_until(trades_in, 30, "every replayed trade on Redis")
                    await asyncio.sleep(0.5)
                assert sim.binance.frames_dropped == 0 and sim.okx.frames_dropped == 0
                # the last candle of each stream stays open (no later trade); the others are closed
                want = {k: candles_of(live.items, k[1], k[0]) for k in subs}
                await wait_until(lambda: all(len(got[k]) >= len(want[k]) for k in subs), 15,
                                 "every closed candle through the gateway")
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
    assert not [ch for ch, _ in replayed.items if not ch.startswith("replay:md:")]
    replay_streams = per_stream(replayed.items)
    for key in sorted(live_streams):
        assert replay_streams[key] == live_streams[key], f"{key}: the replay differs"
    assert set(replay_streams) == set(live_streams)
    for k in subs:
        assert [got[k][t] for t in sorted(got[k])] == want[k], f"candles of {k}"
        assert len(want[k]) >= RECORD_S / 2
