"""The consolidated book: the top levels of each live exchange's book merged by price (pure).

Each level carries its total size and the size per exchange (exchanges in ``EXCHANGES`` order, only those
quoting there). Bids best (highest) first, asks best (lowest) first, at most ``depth`` levels a side. An exchange
whose feed is not live is left out, as for the best touch. A merged book may be crossed (one exchange's bid above
the other's ask): it is reported as is, like the best touch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from shared.schema import Book

DEPTH_MAX = 20
DEPTH_DEFAULT = 10


@dataclass(frozen=True, slots=True)
class MergedLevel:
    price: Decimal
    size: Decimal  # summed over the exchanges
    sizes: tuple[tuple[str, Decimal], ...]  # (exchange, size) of each exchange at this price


@dataclass(frozen=True, slots=True)
class MergedBook:
    symbol: str
    bids: tuple[MergedLevel, ...]
    asks: tuple[MergedLevel, ...]
    live: tuple[str, ...]  # exchanges whose book went in
    ts_event_us: int  # newest exchange time among them
    ts_recv_us: int

    def key(self) -> tuple[object, ...]:
        """What a client sees change (times left out)."""
        return (self.bids, self.asks, self.live)


def _side(books: list[Book], bids: bool, depth: int) -> tuple[MergedLevel, ...]:
    by_price: dict[Decimal, list[tuple[str, Decimal]]] = {}
    for b in books:
        for px, sz in (b.bids if bids else b.asks)[:depth]:
            if sz > 0:
                by_price.setdefault(px, []).append((b.exchange, sz))
    prices = sorted(by_price, reverse=bids)[:depth]
    return tuple(MergedLevel(px, sum((s for _, s in by_price[px]), Decimal(0)), tuple(by_price[px]))
                 for px in prices)


def merge_books(symbol: str, books: Iterable[Book], live: Iterable[str], depth: int = DEPTH_DEFAULT,
                exchange_order: tuple[str, ...] = ("binance", "okx")) -> MergedBook:
    """``books``: the latest book of each exchange (any others are ignored); ``live``: the exchanges to include."""
    if not 1 <= depth <= DEPTH_MAX:
        raise ValueError(f"depth must be between 1 and {DEPTH_MAX}")
    live_set = set(live)
    order = {ex: i for i, ex in enumerate(exchange_order)}
    bs = sorted((b for b in books if b.symbol == symbol and b.exchange in live_set),
                key=lambda b: order.get(b.exchange, len(order)))
    return MergedBook(
        symbol=symbol,
        bids=_side(bs, True, depth),
        asks=_side(bs, False, depth),
        live=tuple(b.exchange for b in bs),
        ts_event_us=max((b.ts_event_us for b in bs), default=0),
        ts_recv_us=max((b.ts_recv_us for b in bs), default=0),
    )
