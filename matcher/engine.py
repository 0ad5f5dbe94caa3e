"""The matcher process: watches the live best touch of every pair and settles paper orders in Redis.

Pairs are split over the ``matcher.shards`` setting's shards: this process holds the shards whose lease it has, any
other matcher process stands by for the rest and takes over a dead holder's (the ``matcher.shards`` module).
For a shard it takes it loads the open orders (its open set), claims the intake entries its previous holder read
but never acknowledged, then follows the shard's intake stream: every order change arrives there, written by the
order's own transaction, so none is missed whatever crashed when. Nothing here grows with the number of users.

Market data and feed status arrive over pub/sub (``shared.pubsub.RedisHub``: the bbo, book and status channels of
every configured pair and exchange, by name, as a cluster has no patterns); after a lost subscription everything is
loaded again. Every
settlement is decided again inside its own Redis transaction (``shared.ledger_store.execute``), so a stale index
entry, a second matcher or a restart in the middle can never apply a fill twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, ClusterError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from matcher import metrics, shards
from matcher.index import OpenOrderIndex
from shared import ledger, ledger_store, names
from shared.best_touch import Touch, best_touch
from shared.errors import DomainError
from shared.feed_health import FeedHealth
from shared.ledger import Order, PairRules
from shared.matching import REST, Decide, Decision, decide_arrival, decide_resting, views_for
from shared.pubsub import RedisHub
from shared.redis_conn import Client, WrongMode, check_mode, connect_any
from shared.schema import BBO, Book, FeedStatus, SchemaError, decode
from shared.settings import EXCHANGES, Settings
from shared.timeutil import now_us

log = logging.getLogger("matcher")
# A cluster failing over or moving slots: start again from Redis, as after a lost connection.
CLUSTER_TRANSIENT = (ClusterError, AskError, TryAgainError, RedisClusterException)

RECONCILE_S = 60.0  # a safety net only: the open sets are read again this often (no scan)
INTAKE_BLOCK_MS = 1000
# Intake entries are acted on as soon as they are read, but acknowledged (with the open set changes they imply, in
# one transaction) at most this long afterwards, or before the matcher writes to Redis about any order: one
# transaction per ACK_DELAY_S instead of one per read keeps the matcher's writes (and their fsyncs under
# ``appendfsync always``) from queueing in front of the gateway's. An entry not yet acknowledged when the matcher
# dies stays pending in the consumer group and is claimed by the next holder (``shards.claim_pending``).
ACK_DELAY_S = 0.05
ACK_MAX = 2000  # ... or as soon as this many entries wait
HEARTBEAT_S = 1.0  # ``names.MATCHER_ALIVE_KEY`` is rewritten this often ...
HEARTBEAT_TTL_MS = 5000  # ... and expires after this long (the gateway's /ready reads it)
# Market/IOC orders found on recovery, or arriving just after a (re)connect, wait (at most this long) for every
# feed's first heartbeat before being judged, so that a matcher that just started (or was blind while Redis was
# away) does not expire them for want of a price it simply has not heard yet.
STARTUP_GRACE_S = 1.5
# On a cluster, how long an announced order change may take to be confirmed before the matcher looks for itself
# (and fences a placement that never arrived): longer than a gateway keeps retrying its transaction through a
# failover, so a gateway that is still trying never meets a fence.
INTENT_WAIT_S = ledger_store.CLUSTER_PATIENCE_S + 10.0


@dataclass(frozen=True, slots=True)
class Intent:
    shard: int
    user_id: str
    token_id: str
    placing: dict[str, Any] | None
    deadline: float

    @classmethod
    def parse(cls, shard: int, raw: bytes, deadline: float) -> Intent:
        d = orjson.loads(raw)
        placing = d["placing"]
        if placing is not None and not isinstance(placing, dict):
            raise TypeError("placing must be an object")
        return cls(shard, str(d["user_id"]), str(d["token_id"]), placing, deadline)


@dataclass(slots=True)
class Unacked:
    """A shard's intake entries read and acted on since ``since`` (monotonic), and the open set changes they imply
    (member -> open), the last word on each order winning."""
    since: float
    ids: list[str] = field(default_factory=list)
    members: dict[str, bool] = field(default_factory=dict)


class Matcher:
    def __init__(self, settings: Settings, redis: Client, me: str | None = None, *,
                 redis_url: str | None = None) -> None:
        self.settings = settings
        self.r = redis
        self.redis_url = redis_url or settings.redis.url  # the pub/sub hub's own connections
        self.keyspace = settings.redis.keyspace
        self.me = me or uuid.uuid4().hex
        self.total = settings.matcher.shards
        self.leases = shards.Leases(redis, self.total, self.me, settings.matcher.lease_ms)
        self.inbox: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()
        self.readers: dict[int, asyncio.Task[None]] = {}
        self.index = OpenOrderIndex()
        self.health = FeedHealth(settings.feeds.stale_after_s)
        self.bbos: dict[tuple[str, str], BBO] = {}
        self.books: dict[tuple[str, str], Book] = {}
        self.rules = {p.symbol: PairRules.of(p) for p in settings.pairs}
        self.pending: list[Order] = []  # recovered market/IOC orders waiting for the feeds
        self.started = time.monotonic()
        self.resync = False
        self.fills = 0
        self.intents: dict[str, Intent] = {}  # intake entry id -> announced change (cluster)
        self.unacked: dict[int, Unacked] = {}  # shard -> entries read and acted on, not yet acknowledged

    # --- state ---------------------------------------------------------------------------------

    def touch(self, symbol: str) -> Touch:
        quotes = [q for (ex, sym), q in self.bbos.items() if sym == symbol]
        return best_touch(symbol, quotes, self.health.live(now_us()))

    async def load_snapshots(self) -> None:
        keys: list[tuple[str, str, str]] = [(kind, ex, sym) for kind in ("bbo", "book") for ex in EXCHANGES
                                            for sym in self.settings.symbols]
        raws = await _mget(self.r, [self.keyspace.md_last_key(*k) for k in keys])
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

    def shard_of(self, symbol: str) -> int:
        return names.matcher_shard(symbol, self.total)

    def owns(self, symbol: str) -> bool:
        return self.shard_of(symbol) in self.leases.held

    async def load_shard(self, n: int) -> None:
        """(Re)build the index of shard ``n`` from its open set (no scan of the keyspace)."""
        orders = await shards.open_orders(self.r, n, self.total)
        metrics.RECOVERIES.inc()
        for o in orders:
            if o.type == "limit":
                self.index.upsert(o)
            elif all((p.user_id, p.token_id) != (o.user_id, o.token_id) for p in self.pending):
                self.pending.append(o)
        log.info("shard %d: %d open orders (%d market/ioc pending)", n, len(orders),
                 sum(1 for p in self.pending if self.shard_of(p.symbol) == n))
        metrics.OPEN_ORDERS.set(len(self.index))
        metrics.PENDING.set(len(self.pending))

    async def take(self, n: int) -> None:
        """Shard ``n``'s lease is ours: its open orders, what its previous holder left unacknowledged, then follow
        its intake stream."""
        log.info("matcher %s takes shard %d", self.me[:8], n)
        await shards.ensure_group(self.r, n)
        await self.load_shard(n)
        await self.on_entries(n, await shards.claim_pending(self.r, n, self.me))
        for s in self.index.symbols():
            if self.shard_of(s) == n:
                await self.match_symbol(s)
        self.readers[n] = asyncio.create_task(self._read_intake(n), name=f"intake-{n}")

    def drop(self, n: int) -> None:
        """Shard ``n``'s lease is lost: stop acting on its pairs at once (its new holder reloads everything)."""
        log.warning("matcher %s lost shard %d", self.me[:8], n)
        task = self.readers.pop(n, None)
        if task is not None:
            task.cancel()
        for o in self.index.orders():
            if self.shard_of(o.symbol) == n:
                self.index.remove((o.user_id, o.token_id))
        self.pending = [o for o in self.pending if self.shard_of(o.symbol) != n]
        self.intents = {k: it for k, it in self.intents.items() if it.shard != n}
        self.unacked.pop(n, None)  # left pending in the group: the new holder claims them

    async def _read_intake(self, n: int) -> None:
        try:
            while True:
                entries = await shards.read_new(self.r, n, self.me, INTAKE_BLOCK_MS)
                if entries:
                    self.inbox.put_nowait(("intake", n, entries))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the main loop raises it: a lost connection restarts everything
            self.inbox.put_nowait(("error", e, None))

    async def on_entries(self, n: int, entries: list[shards.Entry]) -> None:
        """Intake entries of shard ``n``: record what they open and close in its open set and acknowledge them
        (one transaction), then act on each order. An intent (cluster) stays unacknowledged until its confirmation,
        its withdrawal or its deadline (``expire_intents``): a matcher that dies meanwhile leaves it to the next."""
        orders: list[Order] = []
        ack: list[str] = []
        for e in entries:
            if e.intent:
                try:
                    self.intents[e.id] = Intent.parse(n, e.intent, time.monotonic() + INTENT_WAIT_S)
                    continue
                except (ValueError, KeyError, TypeError, ArithmeticError) as err:
                    log.warning("bad intent on shard %d: %r", n, err)
            ack.append(e.id)
            if e.settles:
                self.intents.pop(e.settles, None)
                ack.append(e.settles)
            if e.order:
                try:
                    orders.append(Order.from_dict(orjson.loads(e.order)))
                except (ValueError, KeyError, TypeError, ArithmeticError) as err:
                    log.warning("bad intake entry on shard %d: %r", n, err)
        await self._settle_entries(n, ack, orders)

    async def _settle_entries(self, n: int, ack: list[str], orders: list[Order]) -> None:
        u = self.unacked.get(n)
        if u is None:
            u = self.unacked[n] = Unacked(time.monotonic())
        u.ids += ack
        for o in orders:
            u.members[shards.member(o.user_id, o.token_id)] = o.is_open
        if len(u.ids) >= ACK_MAX:
            await self.flush_acks()
        for o in orders:
            await self.on_order(o)

    def ack_due(self) -> float | None:
        """When the oldest unacknowledged entries are due (monotonic), if any wait."""
        if not self.unacked:
            return None
        return min(u.since for u in self.unacked.values()) + ACK_DELAY_S

    async def flush_acks(self) -> None:
        """Acknowledge what was read, with what it opened and closed in the open sets (one transaction a shard)."""
        while self.unacked:
            n, u = next(iter(self.unacked.items()))
            if n in self.leases.held:
                await shards.settle_entries(self.r, n, u.ids, [m for m, is_open in u.members.items() if is_open],
                                            [m for m, is_open in u.members.items() if not is_open])
            if self.unacked.get(n) is u:
                del self.unacked[n]

    async def expire_intents(self) -> None:
        """Intents past their deadline: the order as it stands is taken as confirmed, and a placement that never
        arrived is fenced (``ledger_store.fence``)."""
        now = time.monotonic()
        for entry_id, it in list(self.intents.items()):
            if it.deadline > now or self.intents.get(entry_id) is not it:
                continue
            del self.intents[entry_id]
            if it.shard not in self.leases.held:
                continue
            order = await ledger_store.fence(self.r, user_id=it.user_id, token_id=it.token_id, placing=it.placing,
                                             now_us=now_us())
            if order is not None and order.reason == ledger.INTAKE_TIMEOUT:
                metrics.FENCED.inc()
                log.warning("order %s/%s announced but not placed within %.0f s: fenced", it.user_id, it.token_id,
                            INTENT_WAIT_S)
            await self._settle_entries(it.shard, [entry_id], [] if order is None else [order])
            await self.flush_acks()  # rare: no reason to keep a fenced intent's entry pending

    # --- settlement ----------------------------------------------------------------------------

    async def settle(self, order: Order, decide: Decide) -> None:
        # An order closed here leaves its open set at once (``shards.forget``): what the intake said of it first.
        await self.flush_acks()
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
        if not applied.order.is_open:
            await shards.forget(self.r, self.shard_of(order.symbol), [shards.member(*key)])
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
        sym = self._on_md(data)
        if sym == "*":
            await self.run_pending()
            for s in self.index.symbols():
                await self.match_symbol(s)
        elif sym is not None and self.owns(sym):
            await self.match_symbol(sym)

    def md_channels(self) -> list[str]:
        ks = self.keyspace
        return [ks.md_channel(kind, ex, sym) for kind in ("bbo", "book") for ex in EXCHANGES
                for sym in self.settings.symbols] + [ks.status_channel(ex) for ex in EXCHANGES]

    def _on_md_message(self, channel: str, data: bytes) -> None:
        self.inbox.put_nowait(("md", channel, data))

    def _on_resubscribed(self) -> None:
        self.resync = True

    async def lease_round(self) -> None:
        gained, lost = await self.leases.round()
        for n in lost:
            self.drop(n)
        for n in gained:
            await self.take(n)

    async def reload(self) -> None:
        """Market snapshots and every held shard's open orders, read again (after a lost message, or as a safety
        net): O(open orders), never a scan."""
        await self.load_snapshots()
        for n in sorted(self.leases.held):
            await self.load_shard(n)
        await self.run_pending()
        for s in self.index.symbols():
            await self.match_symbol(s)

    async def run(self, stop: asyncio.Event, reconcile_s: float, ready: asyncio.Event | None = None) -> None:
        """Serve until ``stop``; ``ready`` is set once the first lease round is done (every shard this matcher could
        take is taken, its orders loaded and matched)."""
        hub = RedisHub(self.redis_url, self.settings.redis.cluster, self._on_md_message,
                       on_resubscribed=self._on_resubscribed)
        try:
            await hub.start()
            for ch in self.md_channels():
                await hub.acquire(ch)
            await self.load_snapshots()
            await self.lease_round()
            log.info("matcher %s ready: shards %s of %d, %d resting orders", self.me[:8],
                     sorted(self.leases.held) or "none (standby)", self.total, len(self.index))
            if ready is not None:
                ready.set()
            lease_every = self.settings.matcher.lease_ms / 3000
            next_lease = time.monotonic() + lease_every
            next_reconcile = time.monotonic() + reconcile_s
            next_beat = 0.0
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_S
                    await self.heartbeat()
                if now >= next_lease:
                    next_lease = now + lease_every
                    await self.lease_round()
                due = self.ack_due()
                wait = 0.2 if due is None else min(0.2, max(0.0, due - now))
                try:
                    kind, a, b = (self.inbox.get_nowait() if not self.inbox.empty()
                                  else await asyncio.wait_for(self.inbox.get(), wait))
                except TimeoutError:
                    kind, a, b = "", None, None
                if self.resync:  # pub/sub resubscribed: market data may have been lost
                    self.resync = False
                    self.started = time.monotonic()
                    await self.reload()
                t0 = time.perf_counter()
                if kind == "error":
                    raise a
                if kind == "md":
                    await self.handle(a, b)
                elif kind == "intake" and a in self.leases.held:
                    await self.on_entries(a, b)
                if kind:
                    metrics.HANDLE_SECONDS.observe(time.perf_counter() - t0)
                await self.run_pending()
                if self.intents:
                    await self.expire_intents()
                due = self.ack_due()
                if due is not None and time.monotonic() >= due:
                    await self.flush_acks()
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + reconcile_s
                    await self.reload()
        finally:
            for task in self.readers.values():
                task.cancel()
            self.readers.clear()
            with contextlib.suppress(Exception):
                await hub.stop()
            if stop.is_set():  # a clean stop: hand the shards over at once rather than let the leases expire
                with contextlib.suppress(Exception):
                    await self.flush_acks()
                with contextlib.suppress(Exception):
                    await self.leases.release_all()
                with contextlib.suppress(Exception):
                    await self.r.delete(names.MATCHER_ALIVE_KEY)

    async def heartbeat(self) -> None:
        await self.r.set(names.MATCHER_ALIVE_KEY, now_us(), px=HEARTBEAT_TTL_MS)
        metrics.OPEN_ORDERS.set(len(self.index))
        metrics.PENDING.set(len(self.pending))


async def run_matcher(settings: Settings, stop: asyncio.Event, *, redis_url: str | None = None,
                      reconcile_s: float = RECONCILE_S, ready: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set; reconnects (and rebuilds everything from Redis) after a lost connection, under the
    same matcher id, so that its leases are still its own."""
    backoff = 0.2
    me = uuid.uuid4().hex
    while not stop.is_set():
        url = redis_url or settings.redis.url
        r = connect_any(url, settings.redis.cluster)
        if backoff == 0.2:
            try:
                await check_mode(r)
            except WrongMode:
                await r.aclose()
                raise
        ledger_store.require_replicas(r, settings.redis.replica_acks, settings.redis.replica_ack_timeout_ms)
        m = Matcher(settings, r, me, redis_url=url)
        try:
            await m.run(stop, reconcile_s, ready)
        except (RedisConnectionError, RedisTimeoutError, OSError, *CLUSTER_TRANSIENT) as e:
            metrics.REDIS_RECONNECTS.inc()
            log.warning("redis connection lost (%s); reconnecting in %.1fs", e, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await r.aclose()


async def _mget(r: Client, keys: list[str]) -> list[Any]:
    """MGET; on a cluster the keys span slots, so one MGET per slot (redis-py's ``mget_nonatomic``)."""
    if isinstance(r, RedisCluster):
        return await r.mget_nonatomic(keys)
    return await r.mget(keys)
