"""The paper-trading ledger: pure functions over an account and an order, no I/O.

An account holds, per asset, ``total`` and ``reserved`` (``available = total - reserved``). Every
operation takes the current state and returns the new state plus the events to publish; a violation
raises ``DomainError`` and changes nothing (the inputs are never mutated). The Redis shell
(``shared.ledger_store``) reads the state, calls one of these and writes the result in one transaction.

Reservations: a buy locks ``price * quantity * (1 + taker fee)`` of the quote asset (a market buy, which
has no price, locks all the quote available when it is placed and spends what the book allows); a sell
locks ``quantity`` of the base asset. Settlement releases the whole reservation, moves the assets and
charges the fee in the asset received.

All arithmetic runs in a context that traps ``Inexact``: a result that would need rounding is a bug, not
a silent loss of a digit.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from shared.errors import DomainError
from shared.money import fmt, is_multiple
from shared.settings import Pair

Side = Literal["buy", "sell"]
OrderType = Literal["limit", "market", "ioc"]
Status = Literal["open", "filled", "cancelled", "expired", "rejected"]
Liquidity = Literal["maker", "taker"]

STATUSES: tuple[Status, ...] = ("open", "filled", "cancelled", "expired", "rejected")
TERMINAL: frozenset[Status] = frozenset({"filled", "expired", "rejected", "cancelled"})
# A client's own id for an order: unique per user, forever.
TOKEN_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
ZERO = Decimal(0)

EXACT = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN,
                        traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow, decimal.Inexact])
# Only the (informational) average price is a division; it is rounded to this many significant digits.
AVG = decimal.Context(prec=20, rounding=decimal.ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class PairRules:
    """Every rule of a pair: the assets, the filters an order must pass and the fee rates.

    ``check_order`` is the one place that validates an order's price and quantity; ``place`` and ``modify``
    call it, so the gateway, the matcher and the tests all apply the same rules."""

    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    lot_step: Decimal
    min_notional: Decimal = ZERO
    maker_fee: Decimal = ZERO
    taker_fee: Decimal = ZERO

    @classmethod
    def of(cls, pair: Pair) -> PairRules:
        return cls(pair.symbol, pair.base, pair.quote, pair.tick_size, pair.lot_step, pair.min_notional,
                   pair.maker_fee, pair.taker_fee)

    def check_order(self, type_: OrderType, price: Decimal | None, quantity: Decimal) -> None:
        """Refuse (``DomainError``) what this pair does not accept; the checks run in this order."""
        if type_ == "market":
            if price is not None:
                raise DomainError("invalid_field", "a market order takes no price")
        elif price is None:
            raise DomainError("missing_field", "price is required")
        if quantity <= 0 or (price is not None and price <= 0):
            raise DomainError("invalid_order", "price and quantity must be positive")
        if price is not None and not is_multiple(price, self.tick_size):
            raise DomainError("invalid_price", f"price must be a multiple of the tick size {fmt(self.tick_size)}")
        if not is_multiple(quantity, self.lot_step):
            raise DomainError("invalid_quantity", f"quantity must be a multiple of the lot step {fmt(self.lot_step)}")
        if price is not None and EXACT.multiply(price, quantity) < self.min_notional:
            raise DomainError("below_min_notional",
                              f"price x quantity must be at least {fmt(self.min_notional)} {self.quote}")


@dataclass(frozen=True, slots=True)
class Balance:
    total: Decimal = ZERO
    reserved: Decimal = ZERO

    @property
    def available(self) -> Decimal:
        return EXACT.subtract(self.total, self.reserved)


@dataclass(frozen=True, slots=True)
class Account:
    balances: Mapping[str, Balance] = field(default_factory=dict)

    def get(self, asset: str) -> Balance:
        return self.balances.get(asset, Balance())

    def available(self, asset: str) -> Decimal:
        return self.get(asset).available

    def with_(self, asset: str, bal: Balance) -> Account:
        if bal.total < 0 or bal.reserved < 0 or bal.reserved > bal.total:
            raise DomainError("invariant", f"{asset}: total {bal.total}, reserved {bal.reserved} would break the ledger")
        new = dict(self.balances)
        new[asset] = bal
        return Account(new)

    # Redis hash form: t:<ASSET> / r:<ASSET> -> decimal string (other fields are not balances).
    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for asset, b in self.balances.items():
            out[f"t:{asset}"] = fmt(b.total)
            out[f"r:{asset}"] = fmt(b.reserved)
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> Account:
        tot: dict[str, Decimal] = {}
        res: dict[str, Decimal] = {}
        for k, v in raw.items():
            key = k.decode() if isinstance(k, bytes) else str(k)
            kind, _, asset = key.partition(":")
            if kind not in ("t", "r") or not asset:
                continue  # not a balance (the store's version counter)
            (tot if kind == "t" else res)[asset] = Decimal(v.decode() if isinstance(v, bytes) else str(v))
        return cls({a: Balance(tot.get(a, ZERO), res.get(a, ZERO)) for a in set(tot) | set(res)})


@dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str
    token_id: str
    symbol: str
    side: Side
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_asset: str
    exchange: str
    liquidity: Liquidity
    ts_us: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "fill_id": self.fill_id, "token_id": self.token_id, "symbol": self.symbol, "side": self.side,
            "price": fmt(self.price), "quantity": fmt(self.quantity), "fee": fmt(self.fee),
            "fee_asset": self.fee_asset, "exchange": self.exchange, "liquidity": self.liquidity, "ts_us": self.ts_us,
        }

    @classmethod
    def from_dict(cls, o: Mapping[str, Any]) -> Fill:
        return cls(o["fill_id"], o["token_id"], o["symbol"], o["side"], Decimal(o["price"]), Decimal(o["quantity"]),
                   Decimal(o["fee"]), o["fee_asset"], o["exchange"], o["liquidity"], int(o["ts_us"]))


@dataclass(frozen=True, slots=True)
class Order:
    user_id: str
    token_id: str
    symbol: str
    side: Side
    type: OrderType
    price: Decimal | None  # None for a market order
    quantity: Decimal
    reserve_asset: str
    reserved: Decimal  # what this order locks right now (0 once it is closed)
    status: Status = "open"
    filled_quantity: Decimal = ZERO
    filled_notional: Decimal = ZERO  # quote amount exchanged
    fee: Decimal = ZERO
    fee_asset: str = ""
    exchanges: tuple[str, ...] = ()
    created_us: int = 0
    updated_us: int = 0
    version: int = 1
    reason: str = ""

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    @property
    def average_price(self) -> Decimal | None:
        if self.filled_quantity == 0:
            return None
        return AVG.divide(self.filled_notional, self.filled_quantity)

    def to_dict(self) -> dict[str, Any]:
        """Stored form and public form (the user id stays out of the public one, see ``public``)."""
        avg = self.average_price
        return {
            "user_id": self.user_id, "token_id": self.token_id, "symbol": self.symbol, "side": self.side,
            "type": self.type, "price": None if self.price is None else fmt(self.price),
            "quantity": fmt(self.quantity), "status": self.status, "filled_quantity": fmt(self.filled_quantity),
            "filled_notional": fmt(self.filled_notional), "average_price": None if avg is None else fmt(avg),
            "fee": fmt(self.fee), "fee_asset": self.fee_asset, "reserve_asset": self.reserve_asset,
            "reserved": fmt(self.reserved), "exchanges": list(self.exchanges), "created_us": self.created_us,
            "updated_us": self.updated_us, "version": self.version, "reason": self.reason,
        }

    def public(self) -> dict[str, Any]:
        d = self.to_dict()
        del d["user_id"]
        return d

    @classmethod
    def from_dict(cls, o: Mapping[str, Any]) -> Order:
        return cls(
            user_id=o["user_id"], token_id=o["token_id"], symbol=o["symbol"], side=o["side"], type=o["type"],
            price=None if o.get("price") is None else Decimal(o["price"]), quantity=Decimal(o["quantity"]),
            reserve_asset=o["reserve_asset"], reserved=Decimal(o["reserved"]), status=o["status"],
            filled_quantity=Decimal(o["filled_quantity"]), filled_notional=Decimal(o["filled_notional"]),
            fee=Decimal(o["fee"]), fee_asset=o["fee_asset"], exchanges=tuple(o["exchanges"]),
            created_us=int(o["created_us"]), updated_us=int(o["updated_us"]), version=int(o["version"]),
            reason=o.get("reason", ""),
        )


@dataclass(frozen=True, slots=True)
class Leg:
    """One piece of an execution: ``quantity`` at ``price`` taken from ``exchange``'s quote."""

    price: Decimal
    quantity: Decimal
    exchange: str


Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """What happened to an order (``accepted``, ``modified``, ``cancelled``, ``filled``, ``expired``,
    ``rejected``), as published on its user's channel, with the fills it brought."""

    kind: str
    order: Order
    fills: tuple[Fill, ...] = ()

    @property
    def is_final(self) -> bool:
        return self.kind in TERMINAL

    def to_dict(self) -> Event:
        out: Event = {"type": "order", "event": self.kind, "order": self.order.public()}
        if self.fills:
            out["fills"] = [f.to_dict() for f in self.fills]
        return out

    @classmethod
    def from_dict(cls, o: Mapping[str, Any], user_id: str) -> OrderEvent:
        """The published form back (``KeyError``, ``TypeError`` or ``ValueError`` when it is not one)."""
        kind = o["event"]
        if not isinstance(kind, str):
            raise TypeError("event must be a string")
        order = Order.from_dict({**o["order"], "user_id": user_id})
        return cls(kind, order, tuple(Fill.from_dict(f) for f in o.get("fills") or ()))


def event(kind: str, order: Order, fills: Iterable[Fill] = ()) -> Event:
    return OrderEvent(kind, order, tuple(fills)).to_dict()


# --- reservations --------------------------------------------------------------------------------

def buy_lock(price: Decimal, quantity: Decimal, rules: PairRules) -> Decimal:
    return EXACT.multiply(EXACT.multiply(price, quantity), EXACT.add(Decimal(1), rules.taker_fee))


def reservation(rules: PairRules, side: Side, type_: OrderType, price: Decimal | None, quantity: Decimal,
                account: Account) -> tuple[str, Decimal]:
    if side == "sell":
        return rules.base, quantity
    if type_ == "market":
        return rules.quote, account.available(rules.quote)
    assert price is not None
    return rules.quote, buy_lock(price, quantity, rules)


def _lock(acct: Account, asset: str, amount: Decimal) -> Account:
    b = acct.get(asset)
    if amount <= 0 or amount > b.available:
        raise DomainError("insufficient_balance",
                          f"insufficient {asset}: needs {fmt(amount)}, available {fmt(b.available)}")
    return acct.with_(asset, Balance(b.total, EXACT.add(b.reserved, amount)))


def _release(acct: Account, asset: str, amount: Decimal) -> Account:
    b = acct.get(asset)
    if amount > b.reserved:
        raise DomainError("invariant", f"releasing {fmt(amount)} {asset} but only {fmt(b.reserved)} is reserved")
    return acct.with_(asset, Balance(b.total, EXACT.subtract(b.reserved, amount)))


def _need_open(order: Order) -> None:
    if not order.is_open:
        raise DomainError("order_not_open", f"order {order.token_id} is {order.status}")


# --- operations ----------------------------------------------------------------------------------

def deposit(acct: Account, asset: str, amount: Decimal) -> Account:
    if not amount.is_finite() or amount <= 0:
        raise DomainError("invalid_amount", "amount must be positive")
    b = acct.get(asset)
    return acct.with_(asset, Balance(EXACT.add(b.total, amount), b.reserved))


def place(acct: Account, rules: PairRules, *, user_id: str, token_id: str, side: Side, type_: OrderType,
          price: Decimal | None, quantity: Decimal, now_us: int) -> tuple[Account, Order, list[Event]]:
    rules.check_order(type_, price, quantity)
    asset, amount = reservation(rules, side, type_, price, quantity, acct)
    acct2 = _lock(acct, asset, amount)
    fee_asset = rules.base if side == "buy" else rules.quote
    order = Order(user_id=user_id, token_id=token_id, symbol=rules.symbol, side=side, type=type_, price=price,
                  quantity=quantity, reserve_asset=asset, reserved=amount, fee_asset=fee_asset,
                  created_us=now_us, updated_us=now_us)
    return acct2, order, [event("accepted", order)]


def _close(acct: Account, order: Order, status: Status, now_us: int, reason: str = "") -> tuple[Account, Order]:
    acct2 = _release(acct, order.reserve_asset, order.reserved)
    return acct2, replace(order, status=status, reserved=ZERO, updated_us=now_us, version=order.version + 1,
                          reason=reason or order.reason)


def cancel(acct: Account, order: Order, now_us: int) -> tuple[Account, Order, list[Event]]:
    _need_open(order)
    acct2, o = _close(acct, order, "cancelled", now_us)
    return acct2, o, [event("cancelled", o)]


def expire(acct: Account, order: Order, now_us: int, reason: str = "") -> tuple[Account, Order, list[Event]]:
    _need_open(order)
    acct2, o = _close(acct, order, "expired", now_us, reason)
    return acct2, o, [event("expired", o)]


def reject(acct: Account, order: Order, now_us: int, reason: str) -> tuple[Account, Order, list[Event]]:
    _need_open(order)
    acct2, o = _close(acct, order, "rejected", now_us, reason)
    return acct2, o, [event("rejected", o)]


INTAKE_TIMEOUT = "intake_timeout"


def fenced(*, user_id: str, token_id: str, symbol: str, side: Side, type_: OrderType, price: Decimal | None,
           quantity: Decimal, now_us: int) -> tuple[Order, list[Event]]:
    """The record a matcher writes under a token whose announced order never arrived in time (Redis Cluster
    intake): rejected, nothing reserved, so the late transaction finds the token taken and applies nothing."""
    o = Order(user_id=user_id, token_id=token_id, symbol=symbol, side=side, type=type_, price=price,
              quantity=quantity, reserve_asset="", reserved=ZERO, status="rejected", created_us=now_us,
              updated_us=now_us, reason=INTAKE_TIMEOUT)
    return o, [event("rejected", o)]


def modify(acct: Account, rules: PairRules, order: Order, *, price: Decimal | None, quantity: Decimal | None,
           now_us: int) -> tuple[Account, Order, list[Event]]:
    """New price and/or quantity of an open limit order; the reservation is swapped in one step."""
    _need_open(order)
    if order.type != "limit":
        raise DomainError("not_modifiable", f"a {order.type} order cannot be modified")
    new_px = order.price if price is None else price
    new_qty = order.quantity if quantity is None else quantity
    assert new_px is not None
    rules.check_order(order.type, new_px, new_qty)
    released = _release(acct, order.reserve_asset, order.reserved)
    asset, amount = reservation(rules, order.side, order.type, new_px, new_qty, released)
    acct2 = _lock(released, asset, amount)
    o = replace(order, price=new_px, quantity=new_qty, reserved=amount, updated_us=now_us, version=order.version + 1)
    return acct2, o, [event("modified", o)]


def settle(acct: Account, rules: PairRules, order: Order, legs: Iterable[Leg], liquidity: Liquidity, now_us: int,
           ) -> tuple[Account, Order, list[Fill], list[Event]]:
    """Execute ``legs`` against an open order and close it: ``filled`` when the whole quantity traded, else
    ``expired`` (market/IOC remainder; a limit order only ever settles in full)."""
    _need_open(order)
    legs = [lg for lg in legs if lg.quantity > 0]
    rate = rules.maker_fee if liquidity == "maker" else rules.taker_fee
    qty = sum((lg.quantity for lg in legs), ZERO)
    notional = ZERO
    for lg in legs:
        notional = EXACT.add(notional, EXACT.multiply(lg.price, lg.quantity))
    if qty > order.quantity:
        raise DomainError("overfill", f"fill of {fmt(qty)} exceeds order quantity {fmt(order.quantity)}")
    if order.type == "limit" and legs and qty != order.quantity:
        raise DomainError("partial_limit", "a limit order fills in full")
    if order.side == "buy" and notional > order.reserved:
        raise DomainError("overspend", f"cost {fmt(notional)} exceeds the reservation {fmt(order.reserved)}")

    fills: list[Fill] = []
    for i, lg in enumerate(legs):
        received = lg.quantity if order.side == "buy" else EXACT.multiply(lg.price, lg.quantity)
        fills.append(Fill(
            fill_id=f"{order.token_id}:{order.version}:{i}", token_id=order.token_id, symbol=order.symbol,
            side=order.side, price=lg.price, quantity=lg.quantity, fee=EXACT.multiply(received, rate),
            fee_asset=order.fee_asset, exchange=lg.exchange, liquidity=liquidity, ts_us=now_us,
        ))
    fee = sum((f.fee for f in fills), ZERO)

    a = _release(acct, order.reserve_asset, order.reserved)
    base, quote = a.get(rules.base), a.get(rules.quote)
    if order.side == "buy":
        a = a.with_(rules.quote, Balance(EXACT.subtract(quote.total, notional), quote.reserved))
        base = a.get(rules.base)
        a = a.with_(rules.base, Balance(EXACT.add(base.total, EXACT.subtract(qty, fee)), base.reserved))
    else:
        a = a.with_(rules.base, Balance(EXACT.subtract(base.total, qty), base.reserved))
        quote = a.get(rules.quote)
        a = a.with_(rules.quote, Balance(EXACT.add(quote.total, EXACT.subtract(notional, fee)), quote.reserved))

    exchanges = tuple(dict.fromkeys([*order.exchanges, *(lg.exchange for lg in legs)]))
    status: Status = "filled" if qty == order.quantity else "expired"
    o = replace(order, status=status, reserved=ZERO, filled_quantity=EXACT.add(order.filled_quantity, qty),
                filled_notional=EXACT.add(order.filled_notional, notional), fee=EXACT.add(order.fee, fee),
                exchanges=exchanges, updated_us=now_us, version=order.version + 1,
                reason="" if status == "filled" else ("no liquidity" if qty == 0 else "remainder expired"))
    return a, o, fills, [event(status, o, fills)]


def check_invariants(acct: Account, open_orders: Iterable[Order]) -> None:
    """``reserved`` of every asset equals what the open orders lock; nothing negative."""
    locked: dict[str, Decimal] = {}
    for o in open_orders:
        if o.is_open:
            locked[o.reserve_asset] = EXACT.add(locked.get(o.reserve_asset, ZERO), o.reserved)
    for asset in set(acct.balances) | set(locked):
        b = acct.get(asset)
        if b.total < 0 or b.reserved < 0 or b.available < 0:
            raise DomainError("invariant", f"{asset}: negative balance {b}")
        if b.reserved != locked.get(asset, ZERO):
            raise DomainError("invariant", f"{asset}: reserved {b.reserved} but open orders lock "
                                           f"{locked.get(asset, ZERO)}")
