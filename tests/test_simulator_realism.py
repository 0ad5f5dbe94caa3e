"""The simulator's market against the two real ones (issue 12).

- Crossings across exchanges are rare and brief: at most 2 % of the consolidated best-touch updates have the
  best bid on one exchange at or above the best ask on the other, and none lasts more than a fraction of a
  second (real venues are kept in line by arbitrageurs within ~100 ms).
- At ``rate`` 1 every pair has the captures' per-pair rates, within 20 %.

Both are measured on the pure model's own output, in virtual time: fast, deterministic, no captures needed. The
target rates are constants measured once on the captures; ``test_targets_match_the_captures`` re-measures them
when ``../shared/exchange-captures`` is there (skipped otherwise).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from shared.settings import load_settings
from simulator.market import Event, MarketModel, QuoteEvent, pair_specs
from tests.simtools import running

SETTINGS = load_settings(env={})
SPECS = pair_specs(SETTINGS.pairs)
T0 = 1_700_000_000_000.0

# Per-pair rates of the real feeds (frames/s of one symbol on one exchange), measured on
# /work/shared/exchange-captures:
# - Binance, hftbacktest/btcusdt_20240808.gz (BTCUSDT, 2024-08-08 23:54-24:00 UTC, 346 s): 28,040 bookTicker,
#   9,757 trade, 3,451 depth@100ms frames = 81.0, 28.2 and 10.0 /s. (The next file, btcusdt_20240809.gz, is busier:
#   148, 33 and 10 /s; the figures, ~28 trades/s and ~120 frames/s, are the first file's.)
# - OKX, cryptofeed/OKX.ws.1.0 (BTC-USDT, 2022-05-13, 10.8 s): 69 trades frames (one trade each) = 6.4 /s over the
#   whole capture, 98 `books` frames = 9.0 /s (OKX pushes them every 100 ms). The capture has no bbo-tbt: the top
#   of book changed in 71 of the 98 100-ms frames, which a Poisson process does at -ln(1 - 71/98) / 0.1 s = 13 /s.
TARGETS: dict[tuple[str, str], float] = {
    ("binance", "quote"): 81.0, ("binance", "trade"): 28.2, ("binance", "book"): 10.0,
    ("okx", "quote"): 13.0, ("okx", "trade"): 6.4, ("okx", "book"): 9.0,
}
TOLERANCE = 0.20
MAX_CROSSED = 0.02  # of the consolidated best-touch updates
MAX_CROSSING_MS = 500.0


@dataclass
class Stats:
    """One symbol's consolidated best touch over a run, updated on every quote of either exchange."""

    updates: int = 0
    crossed: int = 0  # best bid >= best ask across the exchanges (what the dashboard flags)
    crossings_ms: list[float] = field(default_factory=list)  # how long each crossing lasted
    leader: Counter[str] = field(default_factory=Counter)  # which exchange alone had the best bid
    _tops: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    _since: float | None = None

    def quote(self, exchange: str, bid: Decimal, ask: Decimal, t_ms: float) -> None:
        self._tops[exchange] = (bid, ask)
        if len(self._tops) < 2:
            return
        self.updates += 1
        best_bid = max(b for b, _ in self._tops.values())
        best_ask = min(a for _, a in self._tops.values())
        if best_bid >= best_ask:
            self.crossed += 1
            if self._since is None:
                self._since = t_ms
        elif self._since is not None:
            self.crossings_ms.append(t_ms - self._since)
            self._since = None
        bidders = [ex for ex, (b, _) in self._tops.items() if b == best_bid]
        if len(bidders) == 1:
            self.leader[bidders[0]] += 1

    @property
    def crossed_share(self) -> float:
        return self.crossed / self.updates if self.updates else 0.0


@functools.cache
def run_model(seconds: float, seed: int = 1, rate: float = 1.0, step_ms: float = 50.0) -> tuple[Event, ...]:
    """Every event of ``seconds`` of virtual time (cached: several tests read the same run)."""
    model = MarketModel(SPECS, seed=seed, rate=rate, start_ms=T0)
    out: list[Event] = []
    t, end = T0, T0 + seconds * 1000
    while t < end:
        t = min(t + step_ms, end)
        out.extend(model.advance(t))
    return tuple(out)


def touch_stats(events: Iterable[Event]) -> dict[str, Stats]:
    stats = {s.symbol: Stats() for s in SPECS}
    for ev in events:
        if isinstance(ev, QuoteEvent):
            stats[ev.symbol].quote(ev.exchange, ev.bid, ev.ask, float(ev.ts_ms))
    return stats


def report(stats: dict[str, Stats]) -> str:
    return ", ".join(f"{sym} {st.crossed_share:.2%} of {st.updates} (max {max(st.crossings_ms, default=0):.0f} ms)"
                     for sym, st in stats.items())


@pytest.mark.parametrize("rate", [1.0, 10.0])
def test_crossings_are_rare_and_brief(rate: float) -> None:
    stats = touch_stats(run_model(300 / rate, rate=rate))
    total = sum(st.updates for st in stats.values())
    crossed = sum(st.crossed for st in stats.values())
    print(f"rate x{rate:g}: crossed {crossed / total:.2%} of {total} updates; {report(stats)}")
    assert crossed / total <= MAX_CROSSED
    for sym, st in stats.items():
        assert st.updates > 20_000 / rate, sym
        assert st.crossed_share <= MAX_CROSSED, (sym, report(stats))
        assert st.crossings_ms, sym  # they do happen, as between real venues...
        assert max(st.crossings_ms) < MAX_CROSSING_MS / rate, (sym, report(stats))  # ...and end at once
        assert sum(st.crossings_ms) / len(st.crossings_ms) < 20 / rate, sym


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_crossings_rare_whatever_the_seed(seed: int) -> None:
    stats = touch_stats(run_model(60, seed=seed))
    for sym, st in stats.items():
        assert st.crossed_share <= MAX_CROSSED, (sym, report(stats))


def test_both_exchanges_take_turns_at_the_best_bid() -> None:
    stats = touch_stats(run_model(300))
    for sym, st in stats.items():
        assert min(st.leader["binance"], st.leader["okx"]) > 50, (sym, st.leader)


def test_x1_has_the_captures_per_pair_rates() -> None:
    seconds = 300
    counts: Counter[tuple[str, str, str]] = Counter((ev.symbol, ev.exchange, ev.kind) for ev in run_model(seconds))
    for spec in SPECS:
        for (exchange, kind), target in TARGETS.items():
            got = counts[(spec.symbol, exchange, kind)] / seconds
            assert abs(got - target) <= TOLERANCE * target, (spec.symbol, exchange, kind, got, target)
    # The rate multiplier scales every one of them.
    fast: Counter[tuple[str, str]] = Counter((ev.exchange, ev.kind) for ev in run_model(30, rate=10)
                                             if ev.symbol == "BTCUSDT")
    for (exchange, kind), target in TARGETS.items():
        assert abs(fast[(exchange, kind)] / 300 - target) <= TOLERANCE * target, (exchange, kind)


def test_fair_price_keeps_its_volatility() -> None:
    """The shared price still walks at ~50 % a year, about 0.9 bp per second, whatever the rate."""
    eth = [s for s in SPECS if s.symbol == "ETHUSDT"]
    for rate, seconds in ((1.0, 400), (10.0, 60)):
        model = MarketModel(eth, seed=6, rate=rate, start_ms=T0)
        mids = []
        for i in range(1, seconds + 1):
            model.advance(T0 + i * 1000)
            mids.append(model.mid("ETHUSDT"))
        moves = [math.log(b / a) for a, b in zip(mids, mids[1:], strict=False)]
        sd_bp = math.sqrt(sum(m * m for m in moves) / len(moves)) * 1e4
        assert 0.6 < sd_bp < 1.2, (rate, sd_bp)


# --- through the real WebSocket servers ----------------------------------------------------------------------

Seen = tuple[float, str, str, Decimal, Decimal]  # arrival (ms), exchange, symbol, bid, ask


async def _read(ws: ClientConnection, exchange: str, out: list[Seen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            return
        m = orjson.loads(raw)
        if exchange == "binance":
            d = m["data"]
            out.append((time.monotonic() * 1000, exchange, d["s"], Decimal(d["b"]), Decimal(d["a"])))
        elif "data" in m:
            d = m["data"][0]
            out.append((time.monotonic() * 1000, exchange, m["arg"]["instId"].replace("-", ""),
                        Decimal(d["bids"][0][0]), Decimal(d["asks"][0][0])))


async def test_quotes_seen_by_a_client_are_rarely_crossed() -> None:
    """One client per exchange, every pair's bookTicker / bbo-tbt for 3 s at x1, merged in arrival order. The two
    sockets are read concurrently, so a frame can overtake one of the other exchange by a few ms: the bound is
    looser than the model's."""
    streams = "/".join(f"{p.binance.lower()}@bookTicker" for p in SETTINGS.pairs)
    args = [{"channel": "bbo-tbt", "instId": p.okx} for p in SETTINGS.pairs]
    seen: list[Seen] = []
    async with running(seed=8) as sim:
        async with connect(f"{sim.binance_url}/stream?streams={streams}", max_queue=None) as b, \
                connect(sim.okx_url, max_queue=None) as o:
            await o.send(orjson.dumps({"op": "subscribe", "args": args}).decode())
            for p in SETTINGS.pairs:
                await sim.okx.wait_subscribed(("bbo-tbt", p.okx))
            await asyncio.gather(_read(b, "binance", seen, 3.0), _read(o, "okx", seen, 3.0))
    stats = {p.symbol: Stats() for p in SETTINGS.pairs}
    for t_ms, exchange, sym, bid, ask in seen:
        stats[sym].quote(exchange, bid, ask, t_ms)
    total = sum(st.updates for st in stats.values())
    crossed = sum(st.crossed for st in stats.values())
    print(f"{len(seen)} quotes in 3 s, crossed {crossed / max(total, 1):.2%}; {report(stats)}")
    assert sum(1 for _, ex, sym, *_ in seen if (ex, sym) == ("binance", "BTCUSDT")) > 3.0 * 81 / 3  # not the thin flow
    assert total > 0 and crossed / total <= 0.05


# --- the targets against the captures (skipped without them) -------------------------------------------------

def _poisson_rate_from_share(changed: int, frames: int, interval_s: float) -> float:
    return -math.log(1 - changed / frames) / interval_s


@pytest.mark.captures
def test_targets_match_the_captures(captures_dir: Path) -> None:
    counts: Counter[str] = Counter()
    first = last = 0
    with gzip.open(captures_dir / "hftbacktest" / "btcusdt_20240808.gz", "rt") as f:
        for line in f:
            ts, text = line.split(" ", 1)
            stream = json.loads(text).get("stream")
            if stream:
                first, last = first or int(ts), int(ts)
                counts[stream.split("@", 1)[1]] += 1
    span = (last - first) / 1e9
    measured = {("binance", "quote"): counts["bookTicker"] / span, ("binance", "trade"): counts["trade"] / span,
                ("binance", "book"): counts["depth@100ms"] / span}

    okx: Counter[str] = Counter()
    stamps: list[float] = []
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    top: tuple[object, ...] | None = None
    with open(captures_dir / "cryptofeed" / "OKX.ws.1.0") as f:
        for line in f:
            if " <- " in line or " <-> " in line:
                continue
            ts, text = line.split(": ", 1)
            m = json.loads(text)
            if "data" not in m:
                continue
            stamps.append(float(ts))
            if m["arg"]["instId"] != "BTC-USDT":
                continue
            channel = m["arg"]["channel"]
            okx[channel] += 1
            if channel == "books":
                if m.get("action") == "snapshot":
                    bids.clear()
                    asks.clear()
                for side, book in (("bids", bids), ("asks", asks)):
                    for px, sz, *_ in m["data"][0][side]:
                        if Decimal(sz) == 0:
                            book.pop(px, None)
                        else:
                            book[px] = sz
                bid = max(bids, key=Decimal)
                ask = min(asks, key=Decimal)
                new_top = (bid, bids[bid], ask, asks[ask])
                okx["top_changed"] += new_top != top
                top = new_top
    okx_span = max(stamps) - min(stamps)
    measured |= {("okx", "trade"): okx["trades"] / okx_span, ("okx", "book"): okx["books"] / okx_span,
                 ("okx", "quote"): _poisson_rate_from_share(okx["top_changed"], okx["books"], 0.1)}
    print({k: round(v, 1) for k, v in measured.items()})
    for key, target in TARGETS.items():
        assert abs(measured[key] - target) <= 0.05 * target, (key, measured[key], target)
