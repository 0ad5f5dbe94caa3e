"""Trading: what the REST routes and the WebSocket actions call.

Every method checks its input against the configuration, runs one ledger transaction (``shared.ledger_store``)
and returns domain objects (``Order``, ``Fill``, balances); every refusal is a ``DomainError``. Formatting is
the transports' business.

One gateway process serialises the ledger operations of one user with an in-process lock: the WATCH/MULTI
transaction is what makes them correct across processes, the lock only keeps a burst from one user from
turning into a storm of retries.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, Protocol, TypeVar

import redis.asyncio as aioredis

from gateway import metrics
from gateway.services.requests import DepositIn, ModifyOrderIn, PlaceOrderIn
from shared import ledger, ledger_store
from shared.errors import DomainError
from shared.ledger import TOKEN_ID_PATTERN, Balance, Fill, Order, OrderEvent, PairRules
from shared.money import fmt
from shared.settings import Settings
from shared.timeutil import now_us

log = logging.getLogger(__name__)
MAX_DEPOSIT = Decimal("1e12")
MAX_BALANCE = Decimal("1e14")
_TOKEN = re.compile(TOKEN_ID_PATTERN)
T = TypeVar("T")


class FinalWatch(Protocol):
    """Resolves a future with the final event of one order (``gateway.services.order_events``)."""

    def watch(self, user_id: str, token_id: str) -> AbstractAsyncContextManager[asyncio.Future[OrderEvent]]: ...


@dataclass(frozen=True, slots=True)
class Placed:
    """A placed order; a market or IOC order answered in its final state carries its ``fills``."""

    order: Order
    fills: tuple[Fill, ...] | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


Balances = Mapping[str, Balance]  # asset -> balance: the configured assets first, then any other held


class _UserLocks:
    """One asyncio.Lock per user id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, list[Any]] = {}  # user id -> [lock, holders and waiters]

    def hold(self, user_id: str) -> _Hold:
        return _Hold(self._locks, user_id)


class _Hold:
    """``async with locks.hold(user)``; a class, not an ``asynccontextmanager``: this is on every order's path and
    the generator-based one cost several times more."""

    __slots__ = ("_locks", "_user_id", "_entry")

    def __init__(self, locks: dict[str, list[Any]], user_id: str) -> None:
        self._locks = locks
        self._user_id = user_id

    async def __aenter__(self) -> None:
        entry = self._locks.get(self._user_id)
        if entry is None:
            entry = self._locks[self._user_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        self._entry = entry
        try:
            await entry[0].acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._entry[0].release()
        self._leave()

    def _leave(self) -> None:
        entry = self._entry
        entry[1] -= 1
        if entry[1] == 0:
            del self._locks[self._user_id]


def _decimals(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # a configured step is finite
    return max(0, -exponent)


def asset_decimals(settings: Settings, asset: str) -> int:
    """Finest precision the asset is traded in: the lot step where it is a base, tick x lot where a quote."""
    places = 0
    for p in settings.pairs:
        if p.base == asset:
            places = max(places, _decimals(p.lot_step))
        if p.quote == asset:
            places = max(places, _decimals(p.tick_size) + _decimals(p.lot_step))
    return places


def _token(token_id: str) -> str:
    if not _TOKEN.fullmatch(token_id):
        raise ledger_store.not_found(token_id[:64])
    return token_id


_PLACED = metrics.ORDERS.labels("placed", "")  # labels() validates and locks on every call


class Trading:
    """The paper-trading account of every user, on one Redis."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, final: FinalWatch | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.final = final
        self.wait_s = settings.gateway.order_final_wait_s
        self.shards = settings.matcher.shards
        self.rules: dict[str, PairRules] = {p.symbol: PairRules.of(p) for p in settings.pairs}
        self._locks = _UserLocks()

    def _rules(self, symbol: str) -> PairRules:
        rules = self.rules.get(symbol)
        if rules is None:
            raise DomainError("unknown_symbol", f"unknown symbol {symbol[:40]!r}; see GET /info")
        return rules

    def _balances(self, acct: ledger.Account) -> dict[str, Balance]:
        return {asset: acct.get(asset) for asset in dict.fromkeys([*self.settings.assets, *sorted(acct.balances)])}

    # -- the account ---------------------------------------------------------------------------------

    async def deposit(self, user_id: str, body: DepositIn) -> Balances:
        asset, amount = body.asset, body.amount
        if asset not in self.settings.assets:
            raise DomainError("unknown_asset",
                              f"unknown asset {asset[:20]!r}; one of {', '.join(self.settings.assets)}")
        if amount > MAX_DEPOSIT:
            raise DomainError("amount_too_large", f"a deposit is at most {fmt(MAX_DEPOSIT)}")
        places = asset_decimals(self.settings, asset)
        if _decimals(amount) > places:
            raise DomainError("too_precise", f"{asset} amounts have at most {places} decimal places")
        async with self._locks.hold(user_id):
            acct = await ledger_store.deposit(self.redis, user_id, asset, amount, max_total=MAX_BALANCE)
        return self._balances(acct)

    async def balance(self, user_id: str) -> Balances:
        return self._balances(await ledger_store.get_account(self.redis, user_id))

    # -- orders --------------------------------------------------------------------------------------

    async def place(self, user_id: str, body: PlaceOrderIn) -> Placed:
        """Validate and accept an order; the matcher fills it.

        A market or IOC order is answered in its final state (with its fills): the matcher's final event is
        awaited for at most ``gateway.order_final_wait_s``, then the current state is returned."""
        try:
            rules = self._rules(body.symbol)
            rules.check_order(body.type, body.price, body.quantity)  # before taking the user's lock
            if self.final is None or body.type == "limit":
                order = await self._place(rules, user_id, body)
                _PLACED.inc()
                return Placed(order)
            async with self.final.watch(user_id, body.token_id) as event:  # subscribed first: cannot be missed
                order = await self._place(rules, user_id, body)
                _PLACED.inc()
                try:
                    ev: OrderEvent | None = await asyncio.wait_for(event, self.wait_s)
                except TimeoutError:
                    ev = None
        except DomainError as e:
            metrics.ORDERS.labels("rejected", e.code).inc()
            log.info("order rejected: %s", e.message, extra={"fields": {
                "event": "order_rejected", "user_id": user_id, "code": e.code, "reason": e.message,
                "token_id": body.token_id}})
            raise
        if ev is not None:
            return Placed(ev.order, ev.fills)
        return await self._current_with_fills(user_id, order)

    async def _place(self, rules: PairRules, user_id: str, body: PlaceOrderIn) -> Order:
        async with self._locks.hold(user_id):
            return await ledger_store.place(self.redis, rules, user_id=user_id, token_id=body.token_id,
                                            side=body.side, type_=body.type, price=body.price,
                                            quantity=body.quantity, now_us=now_us(), shards=self.shards)

    async def _current_with_fills(self, user_id: str, placed: Order) -> Placed:
        order = await ledger_store.get_order(self.redis, user_id, placed.token_id) or placed
        fills: tuple[Fill, ...] = ()
        if order.filled_quantity:
            recent, _ = await ledger_store.list_fills(self.redis, user_id, limit=50, offset=0)
            fills = tuple(f for f in reversed(recent) if f.token_id == order.token_id)
        return Placed(order, fills)

    async def order(self, user_id: str, token_id: str) -> Order:
        order = await ledger_store.get_order(self.redis, user_id, _token(token_id))
        if order is None:
            raise ledger_store.not_found(token_id)
        return order

    async def cancel(self, user_id: str, token_id: str) -> Order:
        _token(token_id)
        async with self._locks.hold(user_id):
            return await ledger_store.cancel(self.redis, user_id=user_id, token_id=token_id, now_us=now_us(),
                                             shards=self.shards)

    async def modify(self, user_id: str, token_id: str, body: ModifyOrderIn) -> Order:
        _token(token_id)
        if body.price is None and body.quantity is None:
            raise DomainError("missing_field", "give a new price and/or quantity")
        async with self._locks.hold(user_id):
            return await ledger_store.modify(self.redis, self.rules, user_id=user_id, token_id=token_id,
                                             price=body.price, quantity=body.quantity, now_us=now_us(),
                                             shards=self.shards)

    async def orders(self, user_id: str, *, status: str | None = None, limit: int = 100,
                     offset: int = 0) -> Page[Order]:
        if status is not None and status not in ledger.STATUSES:
            raise DomainError("invalid_status", f"status must be one of {', '.join(ledger.STATUSES)}")
        orders, total = await ledger_store.list_orders(self.redis, user_id, status=status, limit=limit,
                                                       offset=offset)
        return Page(orders, total, limit, offset)

    async def fills(self, user_id: str, *, limit: int = 100, offset: int = 0) -> Page[Fill]:
        fills, total = await ledger_store.list_fills(self.redis, user_id, limit=limit, offset=offset)
        return Page(fills, total, limit, offset)
