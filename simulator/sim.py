"""The simulator: both exchange servers, the random-walk driver and replay, in one async context manager.

    async with Simulator(settings=settings, seed=1, ping_interval=0.5, okx_idle_timeout=2) as sim:
        settings = settings.model_copy(...)  # point the ingestors at sim.binance_url / sim.okx_url
        sim.pause("BTCUSDT", exchange="okx")
        await sim.okx.push_bbo("BTCUSDT", bid="59999.9", ask="60000.1")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from recorder import format as rec_fmt
from recorder import store as rec_store
from shared.settings import Settings, load_settings
from simulator.binance import BinanceServer
from simulator.market import EXCHANGES, MarketModel, pair_specs
from simulator.okx import OkxServer
from simulator.replay import replay_timeline, scan_keys, source_files, timeline

log = logging.getLogger("simulator")


class Simulator:
    def __init__(
        self,
        settings: Settings | None = None,
        seed: int = 0,
        rate: float = 1.0,
        host: str = "127.0.0.1",
        binance_port: int = 0,
        okx_port: int = 0,
        ping_interval: float = 20.0,
        pong_timeout: float = 60.0,
        okx_idle_timeout: float = 30.0,
        binance_msg_limit: int = 5,
        replay: Sequence[str | Path] = (),
        speed: float = 1.0,
        walk: bool | None = None,
        replay_wait: bool = True,
        replay_autostart: bool = True,
        okx_connect_limit: int = 0,
        replay_from_us: int = 0,
        replay_to_us: int = 0,
        max_gap_s: float = 5.0,
        replay_wait_all: bool = False,
    ) -> None:
        """``replay``: files or folders (recordings and captures), replayed as one timeline within
        ``[replay_from_us, replay_to_us)``, silences over ``max_gap_s`` skipped; ``replay_wait_all``: start once
        every configured pair's stream is subscribed (the ingestors are all there), not at the first."""
        self.settings = settings or load_settings()
        self.seed = seed
        self.rate = rate
        self.replay_from_us = replay_from_us
        self.replay_to_us = replay_to_us
        self.max_gap_s = max_gap_s
        self.replay_wait_all = replay_wait_all
        self.replay_paths = source_files(replay, replay_from_us, replay_to_us) if replay else []
        self.speed = speed
        self.replay_wait = replay_wait
        self.replay_autostart = replay_autostart
        self.walk = (not self.replay_paths) if walk is None else walk
        self.model = MarketModel(pair_specs(self.settings.pairs), seed=seed, rate=rate, start_ms=time.time() * 1000)
        pairs = self.settings.pairs
        self.binance = BinanceServer({p.symbol: p.binance for p in pairs}, host, binance_port,
                                     ping_interval=ping_interval, pong_timeout=pong_timeout,
                                     msg_limit=binance_msg_limit, model=self.model)
        self.okx = OkxServer({p.symbol: p.okx for p in pairs}, host, okx_port, idle_timeout=okx_idle_timeout,
                             model=self.model, seed=seed, connect_limit=okx_connect_limit)
        self.replay_done = asyncio.Event()
        self._recorded_venue_symbols: set[str] = set()
        self.replayed_frames = 0
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def binance_url(self) -> str:
        """Base URL, no path: clients add ``/stream?streams=...`` or ``/ws/...``."""
        return self.binance.base_url

    @property
    def okx_url(self) -> str:
        return self.okx.url

    def server(self, exchange: str) -> BinanceServer | OkxServer:
        if exchange == "binance":
            return self.binance
        if exchange == "okx":
            return self.okx
        raise KeyError(f"unknown exchange {exchange}")

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> Simulator:
        if self.replay_paths:
            # Our recordings hold only the configured pairs' streams, which the servers know already.
            captures: list[str | Path] = [p for p in self.replay_paths if rec_fmt.parse_file_name(p.name) is None]
            streams, args = await asyncio.to_thread(scan_keys, captures)
            recorded = await asyncio.to_thread(
                lambda: {v for p in self.replay_paths if p not in captures for v in rec_store.index_of(p).pairs})
            self._recorded_venue_symbols = recorded | {s.split("@")[0].upper() for s in streams} | {
                inst for _, inst in args}
            self.binance.extra_streams |= streams
            self.okx.extra_args |= args
        await self.binance.start()
        await self.okx.start()
        if self.walk:
            self._tasks.append(asyncio.create_task(self._drive(), name="sim-walk"))
        if not self.replay_paths:
            self.replay_done.set()
        elif self.replay_autostart:
            self.start_replay()
        log.info("simulator up: binance %s okx %s (seed %s, rate %s, walk %s, replay %d file(s))",
                 self.binance_url, self.okx_url, self.seed, self.rate, self.walk, len(self.replay_paths))
        return self

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await asyncio.gather(self.binance.stop(), self.okx.stop())

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # --- control ----------------------------------------------------------------------------------

    def _targets(self, symbol: str | None, exchange: str | None) -> list[tuple[str, str]]:
        exchanges = EXCHANGES if exchange is None else (exchange,)
        symbols = self.model.symbols if symbol is None else (symbol.upper(),)
        for s in symbols:
            if s not in self.model.symbols:
                raise KeyError(f"unknown symbol {s}")
        return [(ex, s) for ex in exchanges for s in symbols]

    def pause(self, symbol: str | None = None, exchange: str | None = None) -> None:
        """Stop the random walk's frames for a symbol and/or exchange (all when None)."""
        for ex, s in self._targets(symbol, exchange):
            self.model.pause(ex, s)

    def resume(self, symbol: str | None = None, exchange: str | None = None) -> None:
        for ex, s in self._targets(symbol, exchange):
            self.model.resume(ex, s)

    # --- drivers ----------------------------------------------------------------------------------

    async def _drive(self) -> None:
        model = self.model
        while True:
            now = time.time() * 1000
            for ev in model.advance(now):
                (self.binance if ev.exchange == "binance" else self.okx).on_event(ev)
            wait_ms = min(max(model.next_due() - time.time() * 1000, 1.0), 50.0)
            await asyncio.sleep(wait_ms / 1000)

    def start_replay(self) -> None:
        """Start replaying the files now (when built with ``replay_autostart=False``)."""
        self.replay_done.clear()
        self._tasks.append(asyncio.create_task(self._replay(), name="sim-replay"))

    async def _wait_all_subscribed(self, within: float = 60.0) -> None:
        """Until the ingestors subscribed every configured pair the files hold, on each exchange."""
        venues = self._recorded_venue_symbols
        b_keys = {f"{p.binance.lower()}@{kind}" for p in self.settings.pairs if p.binance in venues
                  for kind in ("bookTicker", "trade", f"depth{self.settings.binance.depth_levels}@100ms")}
        o_keys = {(ch, p.okx) for p in self.settings.pairs if p.okx in venues
                  for ch in ("bbo-tbt", "trades", "books5")}

        def ready() -> bool:
            return all(self.binance.index.get(k) for k in b_keys) and all(self.okx.index.get(k) for k in o_keys)
        deadline = time.monotonic() + within
        while not ready():
            if time.monotonic() > deadline:
                log.warning("replay: not every pair subscribed after %.0fs; starting anyway", within)
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # the last subscription's ack on its way

    async def _replay(self) -> None:
        try:
            # Frames sent before anyone listens would be lost: start with the first subscription.
            if self.replay_wait:
                waits = [asyncio.ensure_future(s.first_subscription.wait()) for s in (self.binance, self.okx)]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
            if self.replay_wait_all:
                await self._wait_all_subscribed()
            log.info("replay starting (speed %s, %d file(s))", self.speed, len(self.replay_paths))
            frames = timeline(self.replay_paths, self.replay_from_us, self.replay_to_us)
            self.replayed_frames = await replay_timeline(frames, self.binance, self.okx, self.speed, self.max_gap_s)
            log.info("replay finished: %d frames", self.replayed_frames)
        finally:
            self.replay_done.set()
