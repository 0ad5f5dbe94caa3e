"""Trading service layer: what the REST routes and the WebSocket actions call.

Every function validates its input against the configuration, runs one ledger transaction
(``shared.ledger_store``) and returns plain JSON-ready dicts; every rejection is an ``ApiError``.

One gateway process serialises the ledger operations of one user with an in-process lock: the WATCH/MULTI
transaction is what makes them correct across processes, the lock only keeps a burst from one user from
turning into a storm of retries.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import Decimal
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import metrics
from gateway.errors import ApiError
from gateway.trading_models import DepositIn, ModifyOrderIn, PlaceOrderIn
from shared import ledger, ledger_store
from shared.ledger import LedgerError, Order, PairRules
from shared.money import fmt, is_multiple
from shared.settings import Pair, Settings
from shared.timeutil import now_us

log = logging.getLogger("gateway.trading")
TOKEN_RE = r"[A-Za-z0-9_-]{1,64}"
TERMINAL = frozenset({"filled", "expired", "rejected", "cancelled"})
MAX_DEPOSIT = Decimal("1e12")
MAX_BALANCE = Decimal("1e14")


class FinalWatch(Protocol):
    """Something that resolves a future with the terminal event of one order (``gateway.order_events``)."""

    def watch(self, user_id: str, token_id: str) -> AbstractAsyncContextManager[asyncio.Future[dict[str, Any]]]: ...


class _UserLocks:
    """One asyncio.Lock per user id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, user_id: str) -> AsyncIterator[None]:
        lock, n = self._locks.get(user_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[user_id] = (lock, n + 1)
        try:
            async with lock:
                yield
        finally:
            lock, n = self._locks[user_id]
            if n <= 1:
                del self._locks[user_id]
            else:
                self._locks[user_id] = (lock, n - 1)


_locks = _UserLocks()
_PLACED = metrics.ORDERS.labels("placed", "")  # labels() validates and locks on every call


async def _redis_down(_: Request, exc: Exception) -> Response:
    log.warning("redis unavailable: %s", exc)
    return Response(orjson.dumps({"detail": "storage temporarily unavailable, try again", "code": "unavailable"}),
                    status_code=503, media_type="application/json", headers={"Retry-After": "1"})


def install(app: FastAPI) -> None:
    """A Redis outage is a 503, never a 500 with a traceback."""
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)


def _api(e: LedgerError) -> ApiError:
    return ApiError(e.status, e.code, e.detail)


def _decimals(step: Decimal) -> int:
    return max(0, -step.normalize().as_tuple().exponent)  # type: ignore[operator]


def asset_decimals(settings: Settings, asset: str) -> int:
    """Finest precision the asset is traded in: the lot step where it is a base, tick x lot where a quote."""
    places = 0
    for p in settings.pairs:
        if p.base == asset:
            places = max(places, _decimals(p.lot_step))
        if p.quote == asset:
            places = max(places, _decimals(p.tick_size) + _decimals(p.lot_step))
    return places


def _pair(settings: Settings, symbol: str) -> Pair:
    pair = settings.pair(symbol)
    if pair is None:
        raise ApiError(422, "unknown_symbol", f"unknown symbol {symbol[:40]!r}; see GET /info")
    return pair


def _check_steps(pair: Pair, price: Decimal | None, quantity: Decimal) -> None:
    if price is not None and not is_multiple(price, pair.tick_size):
        raise ApiError(422, "invalid_price", f"price must be a multiple of the tick size {fmt(pair.tick_size)}")
    if not is_multiple(quantity, pair.lot_step):
        raise ApiError(422, "invalid_quantity", f"quantity must be a multiple of the lot step {fmt(pair.lot_step)}")
    if price is not None and price * quantity < pair.min_notional:
        raise ApiError(422, "below_min_notional",
                       f"price x quantity must be at least {fmt(pair.min_notional)} {pair.quote}")


def balance_view(settings: Settings, acct: ledger.Account) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"total": {}, "available": {}, "reserved": {}}
    for asset in dict.fromkeys([*settings.assets, *sorted(acct.balances)]):
        b = acct.get(asset)
        out["total"][asset] = fmt(b.total)
        out["available"][asset] = fmt(b.available)
        out["reserved"][asset] = fmt(b.reserved)
    return out


# --- operations ----------------------------------------------------------------------------------

async def deposit(redis: aioredis.Redis, settings: Settings, user_id: str, body: DepositIn) -> dict[str, Any]:
    asset, amount = body.asset, body.amount
    if asset not in settings.assets:
        raise ApiError(422, "unknown_asset", f"unknown asset {asset[:20]!r}; one of {', '.join(settings.assets)}")
    if amount > MAX_DEPOSIT:
        raise ApiError(422, "amount_too_large", f"a deposit is at most {fmt(MAX_DEPOSIT)}")
    places = asset_decimals(settings, asset)
    if _decimals(amount) > places:
        raise ApiError(422, "too_precise", f"{asset} amounts have at most {places} decimal places")
    async with _locks.hold(user_id):
        try:
            acct = await ledger_store.deposit(redis, user_id, asset, amount, max_total=MAX_BALANCE)
        except LedgerError as e:
            raise _api(e) from None
    return balance_view(settings, acct)


async def get_balance(redis: aioredis.Redis, settings: Settings, user_id: str) -> dict[str, dict[str, str]]:
    return balance_view(settings, await ledger_store.get_account(redis, user_id))


def check_order(settings: Settings, body: PlaceOrderIn) -> Pair:
    """The rules a valid body must still meet against the configuration; returns the pair."""
    pair = _pair(settings, body.symbol)
    if body.type == "market":
        if body.price is not None:
            raise ApiError(422, "invalid_field", "a market order takes no price")
    elif body.price is None:
        raise ApiError(422, "missing_field", "price is required")
    _check_steps(pair, body.price, body.quantity)
    return pair


async def place_order(redis: aioredis.Redis, settings: Settings, user_id: str, body: PlaceOrderIn, *,
                      final: FinalWatch | None = None, wait_s: float = 2.0) -> dict[str, Any]:
    """Validate and accept an order; the matcher fills it. Returns the public order.

    With ``final``, a market or IOC order is answered in its final state (with a ``fills`` list): the
    matcher's terminal event is awaited for at most ``wait_s``, then the current state is returned."""
    try:
        pair = check_order(settings, body)
        if final is None or body.type == "limit":
            order = await _place(redis, pair, user_id, body)
            _PLACED.inc()
            return order.public()
        async with final.watch(user_id, body.token_id) as event:  # subscribed before placing: cannot be missed
            order = await _place(redis, pair, user_id, body)
            _PLACED.inc()
            try:
                ev = await asyncio.wait_for(event, wait_s)
            except TimeoutError:
                ev = None
    except ApiError as e:
        metrics.ORDERS.labels("rejected", e.code).inc()
        log.info("order rejected: %s", e.detail, extra={"fields": {
            "event": "order_rejected", "user_id": user_id, "code": e.code, "status": e.status, "reason": e.detail,
            "token_id": body.token_id}})
        raise
    if ev is not None:
        return {**ev["order"], "fills": ev.get("fills", [])}
    return await _current_with_fills(redis, user_id, order)


async def _place(redis: aioredis.Redis, pair: Pair, user_id: str, body: PlaceOrderIn) -> Order:
    async with _locks.hold(user_id):
        try:
            return await ledger_store.place(redis, PairRules.of(pair), user_id=user_id, token_id=body.token_id,
                                            side=body.side, type_=body.type, price=body.price,
                                            quantity=body.quantity, now_us=now_us())
        except LedgerError as e:
            raise _api(e) from None


async def _current_with_fills(redis: aioredis.Redis, user_id: str, placed: Order) -> dict[str, Any]:
    order = await ledger_store.get_order(redis, user_id, placed.token_id) or placed
    fills: list[dict[str, Any]] = []
    if order.filled_quantity:
        recent, _ = await ledger_store.list_fills(redis, user_id, limit=50, offset=0)
        fills = [f.to_dict() for f in reversed(recent) if f.token_id == order.token_id]
    return {**order.public(), "fills": fills}


def _token(token_id: str) -> str:
    if not re.fullmatch(TOKEN_RE, token_id):
        raise _api(ledger_store.not_found(token_id[:64]))
    return token_id


async def get_order(redis: aioredis.Redis, settings: Settings, user_id: str, token_id: str) -> dict[str, Any]:
    order = await ledger_store.get_order(redis, user_id, _token(token_id))
    if order is None:
        raise _api(ledger_store.not_found(token_id))
    return order.public()


async def cancel_order(redis: aioredis.Redis, settings: Settings, user_id: str, token_id: str) -> dict[str, Any]:
    _token(token_id)
    async with _locks.hold(user_id):
        try:
            order = await ledger_store.cancel(redis, user_id=user_id, token_id=token_id, now_us=now_us())
        except LedgerError as e:
            raise _api(e) from None
    return order.public()


async def modify_order(redis: aioredis.Redis, settings: Settings, user_id: str, token_id: str,
                       body: ModifyOrderIn) -> dict[str, Any]:
    _token(token_id)
    price, quantity = body.price, body.quantity
    if price is None and quantity is None:
        raise ApiError(422, "missing_field", "give a new price and/or quantity")

    def rules_of(symbol: str) -> PairRules:
        return PairRules.of(_pair(settings, symbol))

    def check(order: Order, new_price: Decimal, new_qty: Decimal) -> None:
        _check_steps(_pair(settings, order.symbol), new_price, new_qty)

    async with _locks.hold(user_id):
        try:
            order = await ledger_store.modify(redis, rules_of, user_id=user_id, token_id=token_id, price=price,
                                              quantity=quantity, now_us=now_us(), check=check)
        except LedgerError as e:
            raise _api(e) from None
    return order.public()


async def list_orders(redis: aioredis.Redis, settings: Settings, user_id: str, *, status: str | None = None,
                      limit: int = 100, offset: int = 0) -> dict[str, Any]:
    if status is not None and status not in ledger.STATUSES:
        raise ApiError(422, "invalid_status", f"status must be one of {', '.join(ledger.STATUSES)}")
    orders, total = await ledger_store.list_orders(redis, user_id, status=status, limit=limit, offset=offset)
    return {"orders": [o.public() for o in orders], "total": total, "limit": limit, "offset": offset}


async def list_fills(redis: aioredis.Redis, settings: Settings, user_id: str, *, limit: int = 100,
                     offset: int = 0) -> dict[str, Any]:
    fills, total = await ledger_store.list_fills(redis, user_id, limit=limit, offset=offset)
    return {"fills": [f.to_dict() for f in fills], "total": total, "limit": limit, "offset": offset}

