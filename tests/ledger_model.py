"""A reference model of paper trading, written from docs/trading.md (not from the code it checks): balances,
reservations, and what the matcher must do with an order against the quotes the model pushed.

The state machine in ``tests/test_ledger_model.py`` keeps one ``Book`` of quotes per exchange and one ``Ledger``
per user, predicts every response, and compares.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass, field
from decimal import Decimal

D = Decimal
ZERO = D(0)
EXACT = decimal.Context(prec=80, traps=[decimal.Inexact, decimal.InvalidOperation])
_DOWN = decimal.Context(prec=80, rounding=decimal.ROUND_DOWN)


@dataclass(frozen=True)
class PairSpec:
    symbol: str
    base: str
    quote: str
    tick: Decimal
    lot: Decimal
    min_notional: Decimal
    maker_fee: Decimal
    taker_fee: Decimal


@dataclass(frozen=True)
class Quote:
    """One exchange's top of book and one deeper level per side (the book the simulator was told to send)."""

    bid: Decimal
    bid_sz: Decimal
    ask: Decimal
    ask_sz: Decimal
    bid2: Decimal
    bid2_sz: Decimal
    ask2: Decimal
    ask2_sz: Decimal

    def levels(self, side: str) -> list[tuple[Decimal, Decimal]]:
        """What a taker on ``side`` hits, best first."""
        return [(self.ask, self.ask_sz), (self.ask2, self.ask2_sz)] if side == "buy" else \
            [(self.bid, self.bid_sz), (self.bid2, self.bid2_sz)]


@dataclass
class MOrder:
    token_id: str
    side: str
    type: str
    price: Decimal | None
    quantity: Decimal
    reserve_asset: str
    reserved: Decimal
    status: str = "open"
    filled_quantity: Decimal = ZERO
    filled_notional: Decimal = ZERO
    fee: Decimal = ZERO
    exchanges: tuple[str, ...] = ()
    fills: list[tuple[Decimal, Decimal, str, str, Decimal]] = field(default_factory=list)  # price, qty, exchange,
    # liquidity, fee


@dataclass(frozen=True)
class Leg:
    price: Decimal
    quantity: Decimal
    exchange: str


def best(quotes: dict[str, Quote], side: str) -> tuple[Decimal, str]:
    """(best price, the exchange named) on the side a taker on ``side`` hits: largest size first, then name."""
    if side == "buy":
        px = min(q.ask for q in quotes.values())
        named = sorted((ex for ex, q in quotes.items() if q.ask == px), key=lambda ex: (-quotes[ex].ask_sz, ex))
    else:
        px = max(q.bid for q in quotes.values())
        named = sorted((ex for ex, q in quotes.items() if q.bid == px), key=lambda ex: (-quotes[ex].bid_sz, ex))
    return px, named[0]


def crosses(side: str, price: Decimal, quotes: dict[str, Quote]) -> bool:
    px, _ = best(quotes, side)
    return px <= price if side == "buy" else px >= price


def floor_lot(q: Decimal, lot: Decimal) -> Decimal:
    return EXACT.multiply(EXACT.divide_int(q, lot), lot) if q > 0 else ZERO


def walk(side: str, limit: Decimal | None, quantity: Decimal, funds: Decimal | None, quotes: dict[str, Quote],
         lot: Decimal) -> list[Leg]:
    buy = side == "buy"
    levels = [(px, sz, ex) for ex, q in quotes.items() for px, sz in q.levels(side)]
    levels.sort(key=lambda lv: (lv[0] if buy else -lv[0], -lv[1], lv[2]))
    left, legs = quantity, []
    for px, sz, ex in levels:
        if left <= 0:
            break
        if limit is not None and (px > limit if buy else px < limit):
            break
        q = min(left, sz)
        if funds is not None:
            q = min(q, _DOWN.divide(funds, px))
        q = floor_lot(q, lot)
        if q <= 0:
            if funds is not None and floor_lot(_DOWN.divide(funds, px), lot) <= 0:
                break  # cannot pay for one lot here, nor at any later (dearer) level
            continue  # a level smaller than one lot
        legs.append(Leg(px, q, ex))
        left = EXACT.subtract(left, q)
        if funds is not None:
            funds = EXACT.subtract(funds, EXACT.multiply(px, q))
    return legs


@dataclass
class Ledger:
    """One user's balances and orders, as the docs say they must be."""

    pair: PairSpec
    total: dict[str, Decimal] = field(default_factory=dict)
    reserved: dict[str, Decimal] = field(default_factory=dict)
    deposits: dict[str, Decimal] = field(default_factory=dict)
    orders: dict[str, MOrder] = field(default_factory=dict)

    def available(self, asset: str) -> Decimal:
        return self.total.get(asset, ZERO) - self.reserved.get(asset, ZERO)

    def deposit(self, asset: str, amount: Decimal) -> None:
        self.total[asset] = self.total.get(asset, ZERO) + amount
        self.deposits[asset] = self.deposits.get(asset, ZERO) + amount

    def lock_for(self, side: str, type_: str, price: Decimal | None, quantity: Decimal) -> tuple[str, Decimal]:
        p = self.pair
        if side == "sell":
            return p.base, quantity
        if type_ == "market":
            return p.quote, self.available(p.quote)
        assert price is not None
        return p.quote, EXACT.multiply(EXACT.multiply(price, quantity), 1 + p.taker_fee)

    def can_lock(self, asset: str, amount: Decimal, released: Decimal = ZERO) -> bool:
        return 0 < amount <= self.available(asset) + released

    def place(self, token: str, side: str, type_: str, price: Decimal | None, quantity: Decimal) -> MOrder:
        asset, amount = self.lock_for(side, type_, price, quantity)
        assert self.can_lock(asset, amount)
        self.reserved[asset] = self.reserved.get(asset, ZERO) + amount
        o = MOrder(token, side, type_, price, quantity, asset, amount)
        self.orders[token] = o
        return o

    def close(self, o: MOrder, status: str) -> None:
        self.reserved[o.reserve_asset] -= o.reserved
        o.reserved = ZERO
        o.status = status

    def modify(self, o: MOrder, price: Decimal, quantity: Decimal) -> None:
        self.reserved[o.reserve_asset] -= o.reserved
        asset, amount = self.lock_for(o.side, o.type, price, quantity)
        self.reserved[asset] = self.reserved.get(asset, ZERO) + amount
        o.price, o.quantity, o.reserved = price, quantity, amount

    def settle(self, o: MOrder, legs: list[Leg], liquidity: str) -> None:
        p = self.pair
        rate = p.maker_fee if liquidity == "maker" else p.taker_fee
        qty = sum((lg.quantity for lg in legs), ZERO)
        notional = sum((EXACT.multiply(lg.price, lg.quantity) for lg in legs), ZERO)
        fee = ZERO
        for lg in legs:
            received = lg.quantity if o.side == "buy" else EXACT.multiply(lg.price, lg.quantity)
            leg_fee = EXACT.multiply(received, rate)
            fee += leg_fee
            o.fills.append((lg.price, lg.quantity, lg.exchange, liquidity, leg_fee))
        self.close(o, "filled" if qty == o.quantity else "expired")
        if o.side == "buy":
            self.total[p.quote] = self.total.get(p.quote, ZERO) - notional
            self.total[p.base] = self.total.get(p.base, ZERO) + qty - fee
        else:
            self.total[p.base] = self.total.get(p.base, ZERO) - qty
            self.total[p.quote] = self.total.get(p.quote, ZERO) + notional - fee
        o.filled_quantity, o.filled_notional, o.fee = qty, notional, fee
        o.exchanges = tuple(dict.fromkeys(lg.exchange for lg in legs))

    # --- what the matcher must do -------------------------------------------------------------------

    def arrive(self, o: MOrder, quotes: dict[str, Quote]) -> None:
        """An order the matcher sees for the first time (placed or modified)."""
        p = self.pair
        if o.type == "limit":
            assert o.price is not None
            if crosses(o.side, o.price, quotes):
                px, ex = best(quotes, o.side)
                self.settle(o, [Leg(px, o.quantity, ex)], "taker")
            return
        funds = o.reserved if o.side == "buy" and o.type == "market" else None
        legs = walk(o.side, o.price, o.quantity, funds, quotes, p.lot)
        if legs:
            self.settle(o, legs, "taker")
        else:
            self.close(o, "expired")

    def touch_moved(self, quotes: dict[str, Quote]) -> None:
        for o in self.orders.values():
            if o.status == "open" and o.type == "limit":
                assert o.price is not None
                if crosses(o.side, o.price, quotes):
                    _, ex = best(quotes, o.side)
                    self.settle(o, [Leg(o.price, o.quantity, ex)], "maker")
