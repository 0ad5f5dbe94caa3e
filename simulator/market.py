"""The simulated market: one fair price per pair, quoted by both exchanges. No I/O.

Each pair has one fair price shared by the two exchanges, a geometric random walk that jumps at Poisson times.
Each exchange quotes around it with its own spread and a small noise (a mean-reverting offset, always less
than half its spread), and every quote it makes straddles the fair price: bid <= fair < ask, in whole ticks.
Two fresh quotes therefore never cross or lock. When the fair price jumps, each exchange re-quotes after its
own short reaction delay (a few ms), so the consolidated best bid/ask is crossed only in the gap between the
two re-quotes, as between real venues that arbitrageurs keep in line. Between jumps the quotes mostly change
sizes only, and trades print at the exchange's current bid or ask. Prices are whole ticks and sizes whole lot
steps (integers internally, ``Decimal`` in events).

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


# Per-pair rates at x1, measured on the captures in ../shared/exchange-captures (docs/simulator.md; the figures
# are checked by tests/test_simulator_realism.py when the captures are there):
# - Binance, hftbacktest btcusdt_20240808.gz (BTCUSDT, 346 s): 81.0 bookTicker/s, 28.2 trade/s, 10.0 depth@100ms/s.
# - OKX, cryptofeed OKX.ws.1.0 (BTC-USDT, 10.8 s): 6.4 trades/s and `books` every ~100 ms (9.0/s). That capture has
#   no bbo-tbt: the top of book changed in 71 of the 98 100-ms `books` frames, which a Poisson process does at
#   -ln(1 - 71/98) / 0.1 s = 13/s, the stand-in for bbo-tbt.
BINANCE_QUOTES_PER_S = 81.0
BINANCE_TRADES_PER_S = 28.2
OKX_QUOTES_PER_S = 13.0
OKX_TRADES_PER_S = 6.4
BOOK_INTERVAL_MS = 100.0


def _per_exchange(binance: float, okx: float) -> dict[str, float]:
    return {"binance": binance, "okx": okx}


@dataclass(frozen=True, slots=True)
class Rates:
    """The model's parameters. Rates are per symbol and exchange, before the global ``rate`` multiplier."""

    # Quote updates (bookTicker / bbo-tbt) per second, re-quotes after fair-price jumps included.
    quotes: dict[str, float] = field(default_factory=lambda: _per_exchange(BINANCE_QUOTES_PER_S, OKX_QUOTES_PER_S))
    trades: dict[str, float] = field(default_factory=lambda: _per_exchange(BINANCE_TRADES_PER_S, OKX_TRADES_PER_S))
    book_interval_ms: float = BOOK_INTERVAL_MS
    # The shared fair price: a geometric random walk (annualised volatility) that jumps this often.
    vol_annual: float = 0.5
    fair_moves_per_s: float = 1.0
    # Mean delay (exponential) before an exchange re-quotes around a new fair price.
    reaction_ms: dict[str, float] = field(default_factory=lambda: _per_exchange(1.5, 3.0))
    # Spread drawn per re-price, in basis points of the price (never less than one tick).
    spread_bps: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"binance": (0.0, 0.004), "okx": (0.0, 0.02)}
    )
    # Each exchange's noise: where its quote sits around the fair price, in half-spreads (an Ornstein-Uhlenbeck
    # process with this stdev and time constant, clipped to +-0.95 so the quote still straddles the fair price).
    noise_sd: float = 0.5
    noise_tau_s: float = 20.0
    # Chance that an ordinary quote update also re-draws the spread and noise; otherwise only sizes change.
    reprice_prob: float = 0.1


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
    forced: bool = False  # set by a test (set_top): the next generated quote re-prices


@dataclass(slots=True)
class _Sym:
    spec: PairSpec
    log_mid: float  # the shared fair price
    tick_f: float
    lot_f: float
    t_ms: float  # time of the fair price's last jump
    noise: dict[str, float]  # per exchange, in half-spreads
    noise_t_ms: dict[str, float]
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
        # Ordinary quote updates: the quote rate less the re-quotes that follow the fair price's jumps.
        self._plain_quotes: dict[str, float] = {ex: max(self.rates.quotes[ex] - self.rates.fair_moves_per_s, 0.0) for ex in EXCHANGES}
        self._syms: dict[str, _Sym] = {}
        self._heap: list[tuple[float, int, str, str, str]] = []
        self._seq = 0
        for spec in pairs:
            tick_f, lot_f = float(spec.tick), float(spec.lot)
            # A different starting point per seed, within half a percent of the base price.
            mid = spec.base_price * (1 + self.rng.uniform(-0.005, 0.005))
            s = _Sym(spec=spec, log_mid=math.log(mid), tick_f=tick_f, lot_f=lot_f, t_ms=start_ms,
                     noise={ex: self.rng.gauss(0, self.rates.noise_sd) for ex in EXCHANGES},
                     noise_t_ms=dict.fromkeys(EXCHANGES, start_ms), top={}, book_index=dict.fromkeys(EXCHANGES, 0))
            self._syms[spec.symbol] = s
            self._schedule(start_ms + self._exp(self.rates.fair_moves_per_s), "fair", "", spec.symbol)
            for ex in EXCHANGES:
                s.top[ex] = self._new_top(s, ex, start_ms, reprice=True)
                self._schedule(start_ms + self._exp(self._plain_quotes[ex]), "quote", ex, spec.symbol)
                self._schedule(start_ms + self._exp(self.rates.trades[ex]), "trade", ex, spec.symbol)
                self._schedule(start_ms + self.rng.uniform(0, self._book_interval()), "book", ex, spec.symbol)

    # --- inspection -------------------------------------------------------------------------------

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._syms)

    def spec(self, symbol: str) -> PairSpec:
        return self._syms[symbol].spec

    def mid(self, symbol: str) -> float:
        """The shared fair price."""
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
        s.top[exchange] = _Top(int(bid / tick), int(ask / tick), int(bid_sz / lot), int(ask_sz / lot), forced=True)

    # --- the walk ---------------------------------------------------------------------------------

    def advance(self, now_ms: float) -> list[Event]:
        out: list[Event] = []
        while self._heap and self._heap[0][0] <= now_ms:
            t, _, kind, ex, sym = heapq.heappop(self._heap)
            s = self._syms[sym]
            ts = int(t)
            if kind == "fair":
                self._schedule(t + self._exp(self.rates.fair_moves_per_s), kind, ex, sym)
                self._jump(s, t)
                for e in EXCHANGES:  # each exchange follows after its own reaction delay
                    self._schedule(t + self._exp(1000.0 / self.rates.reaction_ms[e]), "requote", e, sym)
                continue
            paused = (ex, sym) in self.paused
            if kind == "quote" or kind == "requote":
                if kind == "quote":
                    self._schedule(t + self._exp(self._plain_quotes[ex]), kind, ex, sym)
                if not paused:
                    s.top[ex] = self._new_top(s, ex, t, reprice=kind == "requote")
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
        """Time to the next event of a Poisson process of ``per_s`` (x ``rate``), in ms; never for 0."""
        if per_s <= 0:
            return math.inf
        return self.rng.expovariate(per_s * self.rate) * 1000.0

    def _schedule(self, t: float, kind: str, ex: str, sym: str) -> None:
        if t == math.inf:
            return
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, ex, sym))

    def _jump(self, s: _Sym, t: float) -> None:
        """The fair price's jump at ``t``: the walk's whole move since the previous jump."""
        dt = (t - s.t_ms) / 1000.0
        if dt <= 0:
            return
        s.t_ms = t
        s.log_mid += self._sigma_per_s * math.sqrt(dt) * self.rng.gauss(0, 1)

    def _noise(self, s: _Sym, ex: str, t: float) -> float:
        """The exchange's noise at ``t`` (an exact Ornstein-Uhlenbeck step from its last value)."""
        dt = (t - s.noise_t_ms[ex]) / 1000.0
        if dt > 0:
            s.noise_t_ms[ex] = t
            decay = math.exp(-dt / self.rates.noise_tau_s)
            sd = self.rates.noise_sd * math.sqrt(1 - decay * decay)
            s.noise[ex] = s.noise[ex] * decay + sd * self.rng.gauss(0, 1)
        return max(-0.95, min(0.95, s.noise[ex]))

    def _lots(self, s: _Sym, median_notional: float) -> int:
        notional = median_notional * math.exp(self.rng.gauss(0, 0.8))
        return max(1, round(notional / math.exp(s.log_mid) / s.lot_f))

    def _new_top(self, s: _Sym, ex: str, t: float, reprice: bool) -> _Top:
        """The exchange's next best bid/ask. It always straddles the fair price: bid <= floor(fair) < ask."""
        fair = math.exp(s.log_mid) / s.tick_f  # in ticks
        floor_fair = math.floor(fair)
        old = s.top.get(ex)
        if (not reprice and old is not None and not old.forced and old.bid_t <= floor_fair < old.ask_t
                and self.rng.random() >= self.rates.reprice_prob):
            # Most updates change sizes only (one side, sometimes both).
            u = self.rng.random()
            bid_lots = self._lots(s, 20000) if u < 0.55 else old.bid_lots
            ask_lots = self._lots(s, 20000) if u >= 0.45 else old.ask_lots
            return _Top(old.bid_t, old.ask_t, bid_lots, ask_lots)
        lo, hi = self.rates.spread_bps[ex]
        spread = max(1, round(fair * self.rng.uniform(lo, hi) / 1e4))
        center = fair + self._noise(s, ex, t) * spread / 2
        bid_t = min(max(round(center - spread / 2), floor_fair + 1 - spread), floor_fair)
        bid_t = max(1, bid_t)
        return _Top(bid_t, bid_t + spread, self._lots(s, 20000), self._lots(s, 20000))

    def _quote_event(self, s: _Sym, ex: str, ts: int) -> QuoteEvent:
        top, tick, lot = s.top[ex], s.spec.tick, s.spec.lot
        return QuoteEvent(ex, s.spec.symbol, ts, top.bid_t * tick, top.bid_lots * lot, top.ask_t * tick,
                          top.ask_lots * lot)

    def _int(self, lo: int, hi: int) -> int:
        """A uniform integer in [lo, hi]; ``randint`` costs four times as much, and books need ~200 per second."""
        return lo + int(self.rng.random() * (hi - lo + 1))

    def _book_event(self, s: _Sym, ex: str, ts: int) -> BookEvent:
        top, tick, lot = s.top[ex], s.spec.tick, s.spec.lot
        bids = [Level(top.bid_t * tick, top.bid_lots * lot, self._int(1, 12))]
        asks = [Level(top.ask_t * tick, top.ask_lots * lot, self._int(1, 12))]
        bt, at = top.bid_t, top.ask_t
        for _ in range(BOOK_DEPTH - 1):
            bt -= self._int(1, 3)
            at += self._int(1, 3)
            if bt >= 1:
                bids.append(Level(bt * tick, self._lots(s, 15000) * lot, self._int(1, 20)))
            asks.append(Level(at * tick, self._lots(s, 15000) * lot, self._int(1, 20)))
        s.book_index[ex] += 1
        return BookEvent(ex, s.spec.symbol, ts, tuple(bids), tuple(asks), s.book_index[ex])

    def _trade_event(self, s: _Sym, ex: str, ts: int) -> TradeEvent:
        top, tick, lot = s.top[ex], s.spec.tick, s.spec.lot
        side: Side = "buy" if self.rng.random() < 0.5 else "sell"
        price = (top.ask_t if side == "buy" else top.bid_t) * tick
        return TradeEvent(ex, s.spec.symbol, ts, price, self._lots(s, 400) * lot, side, self._int(1, 3))


def book_with_top(model: MarketModel | None, exchange: str, q: QuoteEvent) -> BookEvent:
    """Depth whose first level is exactly ``q``; deeper levels from the model when there is one."""
    if model is None:
        return BookEvent(exchange, q.symbol, q.ts_ms, (Level(q.bid, q.bid_sz),), (Level(q.ask, q.ask_sz),))
    b = model.book(exchange, q.symbol, q.ts_ms)
    bids = (Level(q.bid, q.bid_sz, 1),) + tuple(lv for lv in b.bids[1:] if lv.price < q.bid)
    asks = (Level(q.ask, q.ask_sz, 1),) + tuple(lv for lv in b.asks[1:] if lv.price > q.ask)
    return BookEvent(exchange, q.symbol, q.ts_ms, bids, asks, index=0)
