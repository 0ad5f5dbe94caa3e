"""The matcher process: watches the live best touch of every pair and settles paper orders in Redis.

Start-up (and again after any lost Redis connection): subscribe first (market data, feed status, the
``trading:orders`` nudge channel), then load the latest market snapshots and scan every user's open
orders, so an order placed while the matcher was down or reconnecting is never missed. A periodic
rescan repairs anything a lost pub/sub message could have left out. Every settlement is decided again
inside its own Redis transaction (``shared.ledger_store.execute``), so a stale index entry, a second
matcher or a restart in the middle can never apply a fill twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from matcher import metrics
from matcher.index import OpenOrderIndex
from shared import ledger_store, names
from shared.best_touch import Touch, best_touch
from shared.errors import DomainError
from shared.feed_health import FeedHealth
from shared.ledger import Order, PairRules
from shared.matching import REST, Decide, Decision, decide_arrival, decide_resting, views_for
from shared.redis_conn import connect
from shared.schema import BBO, Book, FeedStatus, SchemaError, decode
from shared.settings import EXCHANGES, Settings
from shared.timeutil import now_us

log = logging.getLogger("matcher")

RECONCILE_S = 60.0  # a safety net only: a pub/sub reconnect already triggers a full recovery
HEARTBEAT_S = 1.0  # ``names.MATCHER_ALIVE_KEY`` is rewritten this often ...
HEARTBEAT_TTL_MS = 5000  # ... and expires after this long (the gateway's /ready reads it)
# Market/IOC orders found on recovery, or arriving just after a (re)connect, wait (at most this long) for every
# feed's first heartbeat before being judged, so that a matcher that just started (or was blind while Redis was
# away) does not expire them for want of a price it simply has not heard yet.
STARTUP_GRACE_S = 1.5


class Matcher:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.r = redis
        self.index = OpenOrderIndex()
        self.health = FeedHealth(settings.feeds.stale_after_s)
        self.bbos: dict[tuple[str, str], BBO] = {}
        self.books: dict[tuple[str, str], Book] = {}
        self.rules = {p.symbol: PairRules.of(p) for p in settings.pairs}
        self.pending: list[Order] = []  # recovered market/IOC orders waiting for the feeds
        self.started = time.monotonic()
        self.resync = False
        self.fills = 0

    # --- state ---------------------------------------------------------------------------------

    def touch(self, symbol: str) -> Touch:
        quotes = [q for (ex, sym), q in self.bbos.items() if sym == symbol]
        return best_touch(symbol, quotes, self.health.live(now_us()))

    async def load_snapshots(self) -> None:
        keys: list[tuple[str, str, str]] = [(kind, ex, sym) for kind in ("bbo", "book") for ex in EXCHANGES
                                            for sym in self.settings.symbols]
        raws = await self.r.mget([names.md_last_key(*k) for k in keys])
        for raw in raws:
            if raw is not None:
                self._on_md(raw, check=False)
        for ex in EXCHANGES:
            # The ingestor's status hash (docs/ingestor.md): trusted when it says "up" and was rewritten within
            # the staleness limit (``updated_us``, at least every second); otherwise wait for a heartbeat.
            st = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                  for k, v in (await self.r.hgetall(names.status_key(ex))).items()}
            ts = st.get("updated_us")
            if st.get("state") == "up" and ts and ts.isdigit():
                self.health.update(FeedStatus(ex, "up", "snapshot", int(ts)), int(ts))

    async def recover(self) -> None:
        """Rebuild the index from Redis (the source of truth)."""
        orders = await ledger_store.scan_open_orders(self.r)
        self.index.clear()
        metrics.RECOVERIES.inc()
        for o in orders:
            if o.type == "limit":
                self.index.upsert(o)
            elif all((p.user_id, p.token_id) != (o.user_id, o.token_id) for p in self.pending):
                self.pending.append(o)
        log.info("recovered %d open orders (%d market/ioc pending)", len(orders), len(self.pending))
        metrics.OPEN_ORDERS.set(len(self.index))
        metrics.PENDING.set(len(self.pending))

    # --- settlement ----------------------------------------------------------------------------

    async def settle(self, order: Order, decide: Decide) -> None:
        rules = self.rules.get(order.symbol)
        if rules is None:
            log.error("order %s/%s has unknown symbol %s", order.user_id, order.token_id, order.symbol)
            self.index.remove((order.user_id, order.token_id))
            return
        try:
            applied = await ledger_store.execute(self.r, rules, user_id=order.user_id, token_id=order.token_id,
                                                 decide=decide, now_us=now_us)
        except DomainError as e:
            log.error("settling %s/%s refused: %s", order.user_id, order.token_id, e.message)
            return
        key = (order.user_id, order.token_id)
        if applied is None:
            self.index.remove(key)
            return
        self.index.upsert(applied.order)
        if applied.decision.outcome == "fill":
            self.fills += 1
        if applied.decision.outcome != "rest":
            self._report(applied)

    @staticmethod
    def _report(applied: ledger_store.Applied) -> None:
        o = applied.order
        for f in applied.fills:
            metrics.FILLS.labels(f.symbol, f.exchange).inc()
            log.info("fill %s %s %s %s @ %s on %s", o.token_id, f.side, f.quantity, f.symbol, f.price, f.exchange,
                     extra={"fields": {"event": "fill", "user_id": o.user_id, "token_id": o.token_id,
                                       "fill_id": f.fill_id, "symbol": f.symbol, "side": f.side,
                                       "price": str(f.price), "quantity": str(f.quantity), "fee": str(f.fee),
                                       "fee_asset": f.fee_asset, "exchange": f.exchange,
                                       "liquidity": f.liquidity}})
        if not o.is_open:
            metrics.ORDERS.labels(o.status).inc()
            level = logging.INFO if o.status == "filled" else logging.WARNING
            log.log(level, "order %s %s%s", o.token_id, o.status, f": {o.reason}" if o.reason else "",
                    extra={"fields": {"event": f"order_{o.status}", "user_id": o.user_id, "token_id": o.token_id,
                                      "symbol": o.symbol, "type": o.type, "status": o.status, "reason": o.reason,
                                      "filled_quantity": str(o.filled_quantity)}})

    def _arrival(self, symbol: str) -> Decide:
        def decide(o: Order) -> Decision:
            touch = self.touch(symbol)
            return decide_arrival(o, touch, views_for(symbol, touch.live, self.bbos, self.books), self.rules[symbol].lot_step)
        return decide

    def _resting(self, symbol: str) -> Decide:
        def decide(o: Order) -> Decision:
            return decide_resting(o, self.touch(symbol)) if o.type == "limit" else REST
        return decide

    async def match_symbol(self, symbol: str) -> None:
        touch = self.touch(symbol)
        for o in self.index.crossing(symbol, touch):
            await self.settle(o, self._resting(symbol))

    async def on_order(self, o: Order) -> None:
        key = (o.user_id, o.token_id)
        known = self.index.get(key)
        if known is not None and known.version >= o.version:
            return
        if not o.is_open:
            self.index.remove(key)
            return
        if o.symbol not in self.rules:
            return
        if o.type != "limit" and self._waiting_for_feeds():
            if all((p.user_id, p.token_id) != key for p in self.pending):
                self.pending.append(o)
            return
        decide = self._arrival(o.symbol)
        if o.type == "limit":
            self.index.upsert(o)
            if decide(o).outcome == "rest":  # the common case: no round trip to Redis just to learn that
                return
        await self.settle(o, decide)

    def _waiting_for_feeds(self) -> bool:
        everyone = len(self.health.live(now_us())) == len(EXCHANGES)
        return not everyone and time.monotonic() - self.started < STARTUP_GRACE_S

    async def run_pending(self) -> None:
        if not self.pending:
            return
        if self._waiting_for_feeds():
            return
        todo, self.pending = self.pending, []
        for o in todo:
            await self.settle(o, self._arrival(o.symbol))

    # --- messages ------------------------------------------------------------------------------

    def _on_md(self, raw: bytes | str, *, check: bool = True) -> str | None:
        """Apply a market data message; returns the symbol to re-check, if any."""
        try:
            msg = decode(raw)
        except SchemaError as e:
            log.warning("bad market data message: %s", e)
            return None
        if isinstance(msg, BBO):
            self.bbos[(msg.exchange, msg.symbol)] = msg
            return msg.symbol
        if isinstance(msg, Book):
            self.books[(msg.exchange, msg.symbol)] = msg
            return None
        if isinstance(msg, FeedStatus):
            was = self.health.is_live(msg.exchange, now_us())
            self.health.update(msg, now_us())
            if self.health.is_live(msg.exchange, now_us()) != was:
                return "*"
        return None

    async def handle(self, channel: str, data: bytes | str) -> None:
        if channel == names.ORDERS_CHANNEL:
            try:
                o = Order.from_dict(orjson.loads(data))
            except (ValueError, KeyError, TypeError, ArithmeticError) as e:
                log.warning("bad order nudge: %r", e)
                return
            await self.on_order(o)
            return
        sym = self._on_md(data)
        if sym == "*":
            await self.run_pending()
            for s in self.index.symbols():
                await self.match_symbol(s)
        elif sym is not None:
            await self.match_symbol(sym)

    def _on_reconnect(self, _conn: AbstractConnection) -> None:
        self.resync = True

    async def run(self, stop: asyncio.Event, reconcile_s: float, ready: asyncio.Event | None = None) -> None:
        """Serve until ``stop``; ``ready`` is set once the open orders are recovered and matched."""
        pubsub = self.r.pubsub()
        try:
            await pubsub.psubscribe(names.md_pattern("bbo"), names.md_pattern("book"), names.status_channel("*"))
            await pubsub.subscribe(names.ORDERS_CHANNEL)
            assert pubsub.connection is not None
            pubsub.connection.register_connect_callback(self._on_reconnect)
            await self.load_snapshots()
            await self.recover()
            for s in self.index.symbols():
                await self.match_symbol(s)
            log.info("matcher ready: %d resting orders", len(self.index))
            if ready is not None:
                ready.set()
            next_reconcile = time.monotonic() + reconcile_s
            next_beat = 0.0
            while not stop.is_set():
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + HEARTBEAT_S
                    await self.heartbeat()
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if self.resync:  # pub/sub reconnected under us: messages may have been lost
                    self.resync = False
                    self.started = time.monotonic()
                    await self.load_snapshots()
                    await self.recover()
                if msg is not None and msg["type"] in ("message", "pmessage"):
                    ch = msg["channel"]
                    t0 = time.perf_counter()
                    await self.handle(ch.decode() if isinstance(ch, bytes) else ch, msg["data"])
                    metrics.HANDLE_SECONDS.observe(time.perf_counter() - t0)
                await self.run_pending()
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + reconcile_s
                    await self.recover()
                    await self.run_pending()
                    for s in self.index.symbols():
                        await self.match_symbol(s)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            if stop.is_set():  # a clean stop: say so at once rather than let the heartbeat expire
                with contextlib.suppress(Exception):
                    await self.r.delete(names.MATCHER_ALIVE_KEY)

    async def heartbeat(self) -> None:
        await self.r.set(names.MATCHER_ALIVE_KEY, now_us(), px=HEARTBEAT_TTL_MS)
        metrics.OPEN_ORDERS.set(len(self.index))
        metrics.PENDING.set(len(self.pending))


async def run_matcher(settings: Settings, stop: asyncio.Event, *, redis_url: str | None = None,
                      reconcile_s: float = RECONCILE_S, ready: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set; reconnects (and rebuilds everything from Redis) after a lost connection."""
    backoff = 0.2
    while not stop.is_set():
        r = connect(redis_url or settings.redis.url)
        m = Matcher(settings, r)
        try:
            await m.run(stop, reconcile_s, ready)
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            metrics.REDIS_RECONNECTS.inc()
            log.warning("redis connection lost (%s); reconnecting in %.1fs", e, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await r.aclose()
