"""Best touch across exchanges: a pure function over the latest BBO of each live exchange.

The best bid is the highest bid, the best ask the lowest ask; every exchange at that price is named
(``bid_exchanges``), the first one being the one with the largest size. An exchange whose feed is not
live is left out. A crossed result (best bid >= best ask across two exchanges) is reported as is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from shared.schema import BBO


@dataclass(frozen=True, slots=True)
class Touch:
    symbol: str
    bid_px: Decimal | None
    bid_sz: Decimal | None  # summed over the exchanges at the best price
    bid_exchanges: tuple[str, ...]
    ask_px: Decimal | None
    ask_sz: Decimal | None
    ask_exchanges: tuple[str, ...]
    live: tuple[str, ...]  # exchanges taken into account
    ts_event_us: int  # newest exchange time among the inputs
    ts_recv_us: int  # newest receive time among the inputs

    @property
    def crossed(self) -> bool:
        return self.bid_px is not None and self.ask_px is not None and self.bid_px >= self.ask_px


def best_touch(symbol: str, quotes: Iterable[BBO], live: Iterable[str]) -> Touch:
    live_set = set(live)
    qs = sorted((q for q in quotes if q.exchange in live_set and q.symbol == symbol), key=lambda q: q.exchange)
    bid_px = max((q.bid_px for q in qs if q.bid_sz > 0), default=None)
    ask_px = min((q.ask_px for q in qs if q.ask_sz > 0), default=None)
    bids = sorted((q for q in qs if q.bid_px == bid_px and q.bid_sz > 0), key=lambda q: -q.bid_sz)
    asks = sorted((q for q in qs if q.ask_px == ask_px and q.ask_sz > 0), key=lambda q: -q.ask_sz)
    return Touch(
        symbol=symbol,
        bid_px=bid_px,
        bid_sz=sum((q.bid_sz for q in bids), Decimal(0)) if bids else None,
        bid_exchanges=tuple(q.exchange for q in bids),
        ask_px=ask_px,
        ask_sz=sum((q.ask_sz for q in asks), Decimal(0)) if asks else None,
        ask_exchanges=tuple(q.exchange for q in asks),
        live=tuple(sorted(live_set & {q.exchange for q in qs})),
        ts_event_us=max((q.ts_event_us for q in qs), default=0),
        ts_recv_us=max((q.ts_recv_us for q in qs), default=0),
    )
