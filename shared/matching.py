"""Matching rules, pure: given an order and what the live exchanges show, decide what executes.

- A resting limit order fills in full at its own limit price once the touch crosses it (maker fee):
  a buy when the best ask <= limit, a sell when the best bid >= limit.
- A limit order that is marketable when it arrives (placed or modified) fills in full at the touch price
  (taker fee): the price improvement stays with the user.
- Market and IOC orders walk the top levels of every live exchange, best price first, take what the shown
  size allows (IOC never beyond its limit, a market buy never beyond its reserved funds) and leave the
  remainder to expire. A market order with no live price is rejected.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from shared.best_touch import Touch
from shared.ledger import EXACT, Leg, Liquidity, Order, Side
from shared.schema import BBO, Book, Level

_DOWN = decimal.Context(prec=60, rounding=decimal.ROUND_DOWN)
Outcome = Literal["fill", "rest", "expire", "reject"]


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    legs: tuple[Leg, ...] = ()
    liquidity: Liquidity = "taker"
    reason: str = ""


REST = Decision("rest")
# How the matcher judges an order: applied inside the settlement transaction to the order as stored there.
Decide = Callable[[Order], Decision]


@dataclass(frozen=True, slots=True)
class ExchangeView:
    """One live exchange's side of the book for one symbol: its BBO and, when known, its top levels."""

    exchange: str
    bbo: BBO | None
    book: Book | None

    def levels(self, side: Side) -> tuple[Level, ...]:
        """Levels a taker on ``side`` would hit (asks for a buy, bids for a sell), best first.

        The BBO is the freshest top; deeper levels come from the book, those strictly behind the BBO price."""
        if side == "buy":
            top = (self.bbo.ask_px, self.bbo.ask_sz) if self.bbo and self.bbo.ask_sz > 0 else None
            deep = self.book.asks if self.book else ()
            behind = (lambda px: px > top[0]) if top else (lambda px: True)
        else:
            top = (self.bbo.bid_px, self.bbo.bid_sz) if self.bbo and self.bbo.bid_sz > 0 else None
            deep = self.book.bids if self.book else ()
            behind = (lambda px: px < top[0]) if top else (lambda px: True)
        out = [top] if top else []
        out.extend((px, sz) for px, sz in deep if sz > 0 and behind(px))
        return tuple(out)


def crosses(order: Order, touch: Touch) -> bool:
    if order.price is None:
        return False
    if order.side == "buy":
        return touch.ask_px is not None and touch.ask_px <= order.price
    return touch.bid_px is not None and touch.bid_px >= order.price


def decide_resting(order: Order, touch: Touch) -> Decision:
    """A limit order already resting in the book."""
    if order.type != "limit" or not order.is_open or not crosses(order, touch):
        return REST
    assert order.price is not None
    exchanges = touch.ask_exchanges if order.side == "buy" else touch.bid_exchanges
    return Decision("fill", (Leg(order.price, order.quantity, exchanges[0]),), "maker")


def _floor(value: Decimal, step: Decimal) -> Decimal:
    return EXACT.multiply(EXACT.divide_int(value, step), step) if value > 0 else Decimal(0)


def walk(order: Order, views: Iterable[ExchangeView], lot_step: Decimal) -> tuple[Leg, ...]:
    """Take liquidity level by level across exchanges, best price first (ties: larger size first)."""
    buy = order.side == "buy"
    levels = [(px, sz, v.exchange) for v in views for px, sz in v.levels(order.side)]
    levels.sort(key=lambda lv: (lv[0] if buy else -lv[0], -lv[1], lv[2]))
    left = order.quantity
    funds = order.reserved if buy and order.type == "market" else None
    legs: list[Leg] = []
    for px, sz, ex in levels:
        if left <= 0:
            break
        if order.price is not None and (px > order.price if buy else px < order.price):
            break
        q = min(left, sz)
        if funds is not None:
            q = min(q, _affordable(funds, px))
        q = _floor(q, lot_step)
        if q <= 0:
            if funds is not None and _floor(_affordable(funds, px), lot_step) <= 0:
                break  # cannot afford even one lot at this price; later levels are dearer
            continue
        legs.append(Leg(px, q, ex))
        left = EXACT.subtract(left, q)
        if funds is not None:
            funds = EXACT.subtract(funds, EXACT.multiply(px, q))
    return tuple(legs)


def _affordable(funds: Decimal, px: Decimal) -> Decimal:
    """Largest quantity that ``funds`` pays for at ``px`` (not rounded to the lot yet, never over)."""
    if px <= 0 or funds <= 0:
        return Decimal(0)
    # funds / px may not terminate: truncate (never round up), then the lot floor makes it exact.
    return _DOWN.divide(funds, px)


def decide_arrival(order: Order, touch: Touch, views: Iterable[ExchangeView], lot_step: Decimal) -> Decision:
    """An order the matcher sees for the first time (placed, modified, or found on recovery for market/IOC)."""
    if not order.is_open:
        return REST
    if order.type == "limit":
        if not crosses(order, touch):
            return REST
        if order.side == "buy":
            assert touch.ask_px is not None
            return Decision("fill", (Leg(touch.ask_px, order.quantity, touch.ask_exchanges[0]),), "taker")
        assert touch.bid_px is not None
        return Decision("fill", (Leg(touch.bid_px, order.quantity, touch.bid_exchanges[0]),), "taker")
    if not touch.live or (touch.ask_px if order.side == "buy" else touch.bid_px) is None:
        if order.type == "market":
            return Decision("reject", reason="no live price")
        return Decision("expire", reason="no live price")
    legs = walk(order, views, lot_step)
    if not legs:
        return Decision("expire", reason="nothing to take within the order's limits")
    return Decision("fill", legs, "taker")


def views_for(symbol: str, live: Iterable[str], bbos: Mapping[tuple[str, str], BBO],
              books: Mapping[tuple[str, str], Book]) -> list[ExchangeView]:
    return [ExchangeView(ex, bbos.get((ex, symbol)), books.get((ex, symbol))) for ex in sorted(set(live))]
