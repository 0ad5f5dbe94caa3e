"""The simulated market: a seeded random walk per pair turned into quote, book and trade events. No I/O.

Each pair has one common fair price (a geometric random walk) and, per exchange, a small relative basis
that mean-reverts (an Ornstein-Uhlenbeck process), so the two exchanges' mids are close, never identical,
and the best bid/ask keeps moving from one exchange to the other. Prices are whole ticks and sizes whole
lot steps (integers internally, ``Decimal`` in events).

Time is virtual: ``advance(now_ms)`` pops every event scheduled up to ``now_ms`` in time order, and every
random draw (values and arrival times) comes from one ``random.Random(seed)``, so a seed and a start time
give the same event sequence whatever the caller's tick.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from shared.settings import Pair

Exchange = Literal["binance", "okx"]
EXCHANGES: tuple[Exchange, ...] = ("binance", "okx")
Side = Literal["buy", "sell"]
Kind = Literal["quote", "book", "trade"]

# Rough real prices so the numbers look familiar; unknown bases start at 100.
BASE_PRICES: dict[str, float] = {
    "BTC": 60000.0, "ETH": 3000.0, "SOL": 150.0, "XRP": 0.6, "DOGE": 0.12, "BNB": 550.0,
    "ADA": 0.45, "LTC": 80.0, "AVAX": 30.0, "DOT": 6.0, "LINK": 14.0, "TRX": 0.12,
}

BOOK_DEPTH = 20


@dataclass(frozen=True, slots=True)
class PairSpec:
    symbol: str  # ours, BTCUSDT
    binance: str  # BTCUSDT
    okx: str  # BTC-USDT
    tick: Decimal
    lot: Decimal
    base_price: float


@dataclass(frozen=True, slots=True)
class Rates:
    """Events per second per symbol and exchange (before the global ``rate`` multiplier)."""

    quotes: dict[str, float] = field(default_factory=lambda: {"binance": 8.0, "okx": 5.0})
    trades: dict[str, float] = field(default_factory=lambda: {"binance": 3.0, "okx": 2.0})
    book_interval_ms: float = 100.0
    # Annualised volatility of the common price; stdev and half-life of each exchange's basis.
    vol_annual: float = 0.5
    basis_sd: float = 0.00004
    basis_tau_s: float = 20.0
    spread_bps: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"binance": (0.05, 0.6), "okx": (0.1, 0.9)}
    )


@dataclass(frozen=True, slots=True)
class Level:
    price: Decimal
    size: Decimal
    orders: int = 1


@dataclass(frozen=True, slots=True)
class QuoteEvent:
    exchange: str
    symbol: str
    ts_ms: int
    bid: Decimal
    bid_sz: Decimal
    ask: Decimal
    ask_sz: Decimal
    kind: Literal["quote"] = "quote"


@dataclass(frozen=True, slots=True)
class BookEvent:
    exchange: str
    symbol: str
    ts_ms: int
    bids: tuple[Level, ...]  # best first
    asks: tuple[Level, ...]
    index: int = 0  # n-th book event of this exchange/symbol (Binance's 1000 ms streams take every 10th)
    kind: Literal["book"] = "book"


@dataclass(frozen=True, slots=True)
class TradeEvent:
    exchange: str
    symbol: str
    ts_ms: int
    price: Decimal
    size: Decimal
    side: Side  # taker's side
    count: int = 1
    kind: Literal["trade"] = "trade"


Event = QuoteEvent | BookEvent | TradeEvent


@dataclass(slots=True)
class _Top:
    bid_t: int  # price in ticks
    ask_t: int
    bid_lots: int
    ask_lots: int


@dataclass(slots=True)
class _Sym:
    spec: PairSpec
    log_mid: float
    tick_f: float
    lot_f: float
    t_ms: float
    basis: dict[str, float]
    top: dict[str, _Top]
    book_index: dict[str, int]


def pair_specs(settings_pairs: Iterable[Pair]) -> list[PairSpec]:
    """Build specs from ``shared.settings.Pair`` objects (imported for the type checker only: this module
    imports nothing at run time)."""
    return [
        PairSpec(symbol=p.symbol, binance=p.binance, okx=p.okx, tick=p.tick_size, lot=p.lot_step,
                 base_price=BASE_PRICES.get(p.base, 100.0))
        for p in settings_pairs
    ]


class MarketModel:
    def __init__(self, pairs: Iterable[PairSpec], seed: int = 0, rate: float = 1.0, start_ms: float = 0.0,
                 rates: Rates | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rng = random.Random(seed)
        self.rate = rate
        self.rates = rates or Rates()
        self.paused: set[tuple[str, str]] = set()
        self._sigma_per_s = self.rates.vol_annual / math.sqrt(365 * 24 * 3600)
        self._syms: dict[str, _Sym] = {}
        self._heap: list[tuple[float, int, str, str, str]] = []
        self._seq = 0
        for spec in pairs:
            tick_f, lot_f = float(spec.tick), float(spec.lot)
            # A different starting point per seed, within half a percent of the base price.
            mid = spec.base_price * (1 + self.rng.uniform(-0.005, 0.005))
            s = _Sym(spec=spec, log_mid=math.log(mid), tick_f=tick_f, lot_f=lot_f, t_ms=start_ms,
                     basis={ex: self.rng.gauss(0, self.rates.basis_sd) for ex in EXCHANGES},
                     top={}, book_index=dict.fromkeys(EXCHANGES, 0))
            self._syms[spec.symbol] = s
            for ex in EXCHANGES:
                s.top[ex] = self._new_top(s, ex)
                self._schedule(start_ms + self._exp(self.rates.quotes[ex]), "quote", ex, spec.symbol)
                self._schedule(start_ms + self._exp(self.rates.trades[ex]), "trade", ex, spec.symbol)
                self._schedule(start_ms + self.rng.uniform(0, self._book_interval()), "book", ex, spec.symbol)

    # --- inspection -------------------------------------------------------------------------------

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._syms)

    def spec(self, symbol: str) -> PairSpec:
        return self._syms[symbol].spec

    def mid(self, symbol: str) -> float:
        return math.exp(self._syms[symbol].log_mid)

    def next_due(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def quote(self, exchange: str, symbol: str, ts_ms: int = 0) -> QuoteEvent:
        s = self._syms[symbol]
        return self._quote_event(s, exchange, ts_ms)

    def book(self, exchange: str, symbol: str, ts_ms: int = 0) -> BookEvent:
        s = self._syms[symbol]
        return self._book_event(s, exchange, ts_ms)

    # --- control ----------------------------------------------------------------------------------

    def pause(self, exchange: str, symbol: str) -> None:
        self.paused.add((exchange, symbol))

    def resume(self, exchange: str, symbol: str) -> None:
        self.paused.discard((exchange, symbol))

    def set_top(self, exchange: str, symbol: str, bid: Decimal, bid_sz: Decimal, ask: Decimal,
                ask_sz: Decimal) -> None:
        """Force one exchange's best bid/ask (tests); the next generated quote replaces it unless paused."""
        s = self._syms[symbol]
        tick, lot = s.spec.tick, s.spec.lot
        s.top[exchange] = _Top(int(bid / tick), int(ask / tick), int(bid_sz / lot), int(ask_sz / lot))

    # --- the walk ---------------------------------------------------------------------------------

    def advance(self, now_ms: float) -> list[Event]:
        out: list[Event] = []
        while self._heap and self._heap[0][0] <= now_ms:
            t, _, kind, ex, sym = heapq.heappop(self._heap)
            s = self._syms[sym]
            self._evolve(s, t)
            paused = (ex, sym) in self.paused
            ts = int(t)
            if kind == "quote":
                self._schedule(t + self._exp(self.rates.quotes[ex]), kind, ex, sym)
                if not paused:
                    s.top[ex] = self._new_top(s, ex)
                    out.append(self._quote_event(s, ex, ts))
            elif kind == "trade":
                self._schedule(t + self._exp(self.rates.trades[ex]), kind, ex, sym)
                if not paused:
                    out.append(self._trade_event(s, ex, ts))
            else:
                self._schedule(t + self._book_interval(), kind, ex, sym)
                if not paused:
                    out.append(self._book_event(s, ex, ts))
        return out

    def _book_interval(self) -> float:
        return self.rates.book_interval_ms / self.rate

    def _exp(self, per_s: float) -> float:
        return self.rng.expovariate(per_s * self.rate) * 1000.0

    def _schedule(self, t: float, kind: str, ex: str, sym: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, ex, sym))

    def _evolve(self, s: _Sym, t: float) -> None:
        dt = (t - s.t_ms) / 1000.0
        if dt <= 0:
            return
        s.t_ms = t
        s.log_mid += self._sigma_per_s * math.sqrt(dt) * self.rng.gauss(0, 1)
        decay = math.exp(-dt / self.rates.basis_tau_s)
        noise = self.rates.basis_sd * math.sqrt(1 - decay * decay)
        for ex in EXCHANGES:
            s.basis[ex] = s.basis[ex] * decay + noise * self.rng.gauss(0, 1)

    def _lots(self, s: _Sym, median_notional: float) -> int:
        notional = median_notional * math.exp(self.rng.gauss(0, 0.8))
        return max(1, round(notional / math.exp(s.log_mid) / s.lot_f))

    def _new_top(self, s: _Sym, ex: str) -> _Top:
        center = math.exp(s.log_mid) * (1 + s.basis[ex]) / s.tick_f
        lo, hi = self.rates.spread_bps[ex]
        spread = max(1, round(center * self.rng.uniform(lo, hi) / 1e4))
        bid_t = max(1, math.floor(center - spread / 2))
        return _Top(bid_t, bid_t + spread, self._lots(s, 20000), self._lots(s, 20000))

    def _quote_event(self, s: _Sym, ex: str, ts: int) -> QuoteEvent:
        top, tick, lot = s.top[ex], s.spec.tick, s.spec.lot
        return QuoteEvent(ex, s.spec.symbol, ts, top.bid_t * tick, top.bid_lots * lot, top.ask_t * tick,
                          top.ask_lots * lot)

    def _book_event(self, s: _Sym, ex: str, ts: int) -> BookEvent:
        top, tick, lot = s.top[ex], s.spec.tick, s.spec.lot
        bids = [Level(top.bid_t * tick, top.bid_lots * lot, self.rng.randint(1, 12))]
        asks = [Level(top.ask_t * tick, top.ask_lots * lot, self.rng.randint(1, 12))]
        bt, at = top.bid_t, top.ask_t
        for _ in range(BOOK_DEPTH - 1):
            bt -= self.rng.randint(1, 3)
            at += self.rng.randint(1, 3)
            if bt >= 1:
                bids.append(Level(bt * tick, self._lots(s, 15000) * lot, self.rng.randint(1, 20)))
            asks.append(Level(at * tick, self._lots(s, 15000) * lot, self.rng.randint(1, 20)))
        s.book_index[ex] += 1
        return BookEvent(ex, s.spec.symbol, ts, tuple(bids), tuple(asks), s.book_index[ex])

    def _trade_event(self, s: _Sym, ex: str, ts: int) -> TradeEvent:
        top, tick, lot = s.top[ex], s.spec.tick, s.spec.lot
        side: Side = "buy" if self.rng.random() < 0.5 else "sell"
        price = (top.ask_t if side == "buy" else top.bid_t) * tick
        return TradeEvent(ex, s.spec.symbol, ts, price, self._lots(s, 400) * lot, side, self.rng.randint(1, 3))


def book_with_top(model: MarketModel | None, exchange: str, q: QuoteEvent) -> BookEvent:
    """Depth whose first level is exactly ``q``; deeper levels from the model when there is one."""
    if model is None:
        return BookEvent(exchange, q.symbol, q.ts_ms, (Level(q.bid, q.bid_sz),), (Level(q.ask, q.ask_sz),))
    b = model.book(exchange, q.symbol, q.ts_ms)
    bids = (Level(q.bid, q.bid_sz, 1),) + tuple(lv for lv in b.bids[1:] if lv.price < q.bid)
    asks = (Level(q.ask, q.ask_sz, 1),) + tuple(lv for lv in b.asks[1:] if lv.price > q.ask)
    return BookEvent(exchange, q.symbol, q.ts_ms, bids, asks, index=0)
