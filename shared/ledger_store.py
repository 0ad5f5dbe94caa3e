"""The ledger's Redis shell: read -> pure ``shared.ledger`` computes -> write, atomically and exactly.

Lua cannot do exact decimal arithmetic, so Python computes every new state and Redis only checks and writes: each
operation is a compare-and-set on the user's version (``_run``, below), one round trip when this process remembers
the user's current state, two otherwise. The writes (order, balances, indexes, fills, and the PUBLISH of the
events) apply together or not at all; a state that changed in between is answered back and the step recomputed.
Every key carries the user's hash tag, so an operation stays in one Redis Cluster slot. ``transact`` (WATCH/MULTI)
remains for keys outside a user's ledger.

Exactly-once fills follow: settlement decides on the order as stored at the version it writes against, and does
nothing unless the order is still open there, so a restarted or second matcher cannot apply a fill twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import random
import secrets
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeGuard, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from shared import ledger, names
from shared.errors import DomainError
from shared.ledger import Account, Fill, Order, PairRules
from shared.matching import REST, Decision
from shared.money import fmt
from shared.redis_conn import Client, ready, refresh_topology

MAX_ATTEMPTS = 200
# Fields of an intake stream entry: an order change (the order JSON), on a cluster also naming the intent it
# confirms; an intent (cluster); an intent withdrawn (its change was refused).
ORDER, CONFIRMS, INTENT, WITHDRAWN = "o", "c", "i", "w"
log = logging.getLogger(__name__)
T = TypeVar("T")


class Busy(DomainError):
    def __init__(self) -> None:
        super().__init__("busy", "the account is busy, try again", retry_after_s=1)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


Cmd = tuple[Any, ...]


def pack(cmds: Sequence[Cmd]) -> bytes:
    """RESP-encode commands (str, bytes or int arguments) into one buffer: one write, one round trip."""
    out: list[bytes] = []
    add = out.append
    for cmd in cmds:
        add(b"*%d\r\n" % len(cmd))
        for a in cmd:
            t = type(a)
            if t is str:
                a = a.encode()
            elif t is int:
                a = b"%d" % a
            elif t is not bytes:
                raise TypeError(f"cannot send {t.__name__} to Redis")
            add(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


# Connections kept out of the client's pool between transactions: taking one from the pool and giving it back
# costs more CPU than a round trip (a lock, a readiness probe, observability hooks). They stay the pool's own,
# so closing the client still closes them; a dropped one reconnects on its next use.
_idle: weakref.WeakKeyDictionary[aioredis.Redis, list[Any]] = weakref.WeakKeyDictionary()
IDLE_MAX = 32
# On a cluster, how long a transaction keeps trying through MOVED replies and a master's failover.
CLUSTER_PATIENCE_S = 20.0
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError, SlotNotCoveredError)


_CLUSTER_TYPES: dict[type, bool] = {}


def _is_cluster(r: Any) -> TypeGuard[RedisCluster]:
    """``isinstance(r, RedisCluster)``, remembered per type: the generic class makes the check cost microseconds."""
    t = type(r)
    known = _CLUSTER_TYPES.get(t)
    if known is None:
        known = _CLUSTER_TYPES[t] = isinstance(r, RedisCluster)
    return known


async def _acquire(r: Client, key: str) -> tuple[Any, Any]:
    """(owner, connection): on a cluster a connection to the master of ``key``'s slot, owned by that node."""
    if _is_cluster(r):
        await ready(r)
        node = r.get_node_from_key(key)
        assert node is not None
        return node, node.acquire_connection()
    assert isinstance(r, aioredis.Redis)  # for the type checker: not a cluster
    idle = _idle.get(r)
    if idle:
        return r, idle.pop()
    return r, await r.connection_pool.get_connection()


async def _release(owner: Any, conn: Any) -> None:
    if isinstance(owner, ClusterNode):
        owner.release(conn)
        return
    idle = _idle.setdefault(owner, [])
    if len(idle) < IDLE_MAX:
        idle.append(conn)
    else:
        await owner.connection_pool.release(conn)


async def _exchange(conn: Any, cmds: Sequence[Cmd], *, keep_errors: bool = False) -> list[Any]:
    """Send ``cmds`` in one write and read their replies, within one socket timeout for them all (redis-py
    would arm a timer per reply, which costs more than parsing it). ``keep_errors``: an error reply is returned
    in its place (the later replies are still read, the connection stays usable), not raised."""
    data = pack(cmds)
    if not conn.is_connected:
        await conn.connect()
    deadline = asyncio.timeout(conn.socket_timeout)
    try:
        async with deadline:
            # redis-py's send_packed_command runs the write in a task of its own (asyncio.wait_for) to time it;
            # this deadline covers it.
            try:
                conn._writer.write(data)
                await conn._writer.drain()
            except OSError as e:
                await conn.disconnect(nowait=True)
                raise RedisConnectionError(f"Error while writing to Redis: {e}") from e
            if not keep_errors:
                return [await conn.read_response(timeout=math.inf) for _ in cmds]
            out: list[Any] = []
            for _ in cmds:
                try:
                    out.append(await conn.read_response(timeout=math.inf))
                except ResponseError as e:
                    out.append(e)
            return out
    except TimeoutError:
        if deadline.expired():
            await conn.disconnect()
            raise RedisTimeoutError("Timeout reading from Redis") from None
        raise


async def transact(r: Client, keys: Sequence[str], reads: Sequence[Cmd],
                   step: Callable[[list[Any]], tuple[T, list[Cmd] | None]]) -> T:
    """Run ``step`` under WATCH ``keys`` until its writes apply, in two round trips per attempt.

    The first sends WATCH and the ``reads`` together; ``step`` (pure, synchronous) gets the replies of the
    reads and returns ``(result, writes)``: ``writes`` is None for a no-op, else the commands the second round
    trip sends inside MULTI/EXEC. A concurrent change of a watched key makes EXEC answer nil and the step is
    recomputed from fresh state. A ``DomainError`` from ``step`` aborts with nothing written.

    redis-py's watch mode costs a round trip per command (WATCH, then each read), hence this lower-level
    path on one connection of the client's pool. On a cluster every key is in one slot and the connection goes
    to that slot's master; a MOVED reply or a lost master (failover) means: learn the slot map again and start
    over, for up to ``CLUSTER_PATIENCE_S`` (a MOVED reply to a command queued in MULTI aborts the EXEC, so
    nothing was applied)."""
    cluster = _is_cluster(r)
    give_up = time.monotonic() + CLUSTER_PATIENCE_S
    reconnects = 0
    attempt = 0
    while attempt < MAX_ATTEMPTS:
        owner, conn = await _acquire(r, keys[0])
        stage = "watch"
        clean = False  # a refusal from ``step`` after UNWATCH leaves the connection fit for reuse
        try:
            try:
                replies = await _exchange(conn, [("WATCH", *keys), *reads])
                try:
                    result, writes = step(replies[1:])
                except BaseException:
                    await _exchange(conn, [("UNWATCH",)])
                    clean = True
                    raise
                if writes is None:
                    await _exchange(conn, [("UNWATCH",)])
                    return result
                stage = "exec"
                acks = _acks.get(r)
                if acks and isinstance(owner, ClusterNode) and not _has_replica(r, keys[0]):
                    acks = None  # a master without replicas (its own died, or it was just promoted)
                tail: list[Cmd] = [("WAIT", *acks)] if acks else []
                replies = await _exchange(conn, [("MULTI",), *writes, ("EXEC",), *tail])
                done = replies[-1 - len(tail)]
                if acks and _is_cluster(r) and replies[-1] < acks[0]:
                    await refresh_topology(r)  # a replica is missing: learn which, rather than wait on each write
            except RedisConnectionError:
                # Nothing was sent to EXEC yet, so trying again on a fresh connection cannot apply twice
                # (a failure during EXEC itself is not retried: it may have applied).
                await conn.disconnect()
                reconnects += 1
                if stage == "exec" or not cluster and reconnects > 1 or cluster and time.monotonic() > give_up:
                    raise
                if cluster:
                    await _cluster_pause(r, reconnects)
                continue
            except _REDIRECTS:
                await conn.disconnect()  # replies may be left unread
                if not cluster or time.monotonic() > give_up:
                    raise
                reconnects += 1
                await _cluster_pause(r, reconnects)
                continue
            if done is not None:
                for reply in done:
                    if isinstance(reply, ResponseError):
                        raise reply
                return result
        except BaseException:
            # Replies may be left unread on the connection: never hand it back to the pool in that state.
            if not clean:
                await conn.disconnect()
            raise
        finally:
            await _release(owner, conn)
        await asyncio.sleep(random.uniform(0, min(0.02, 0.0002 * 2 ** min(attempt, 10))))
        attempt += 1
    raise Busy()


_acks: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()


def _has_replica(r: Any, key: str) -> bool:
    return len(r.nodes_manager.slots_cache.get(r.keyslot(key), ())) > 1


def require_replicas(r: Client, replicas: int, timeout_ms: int) -> None:
    """Every transaction on ``r`` waits (``WAIT``, in the same round trip) until ``replicas`` replicas have its
    writes, at most ``timeout_ms``: what a client was told is done then survives its master's failover. A
    replica that is down only makes the wait time out (the write stands, the master keeps serving)."""
    if replicas > 0:
        _acks[r] = (replicas, timeout_ms)
    else:
        _acks.pop(r, None)


async def _cluster_pause(r: Any, n: int) -> None:
    await refresh_topology(r)
    await asyncio.sleep(min(0.5, 0.01 * 2 ** min(n, 6)))


def _hash(reply: Any) -> dict[Any, Any]:
    """HGETALL's reply: a map in RESP3, a flat list in RESP2."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


async def _read_account(r: Client, user_id: str) -> Account:
    return Account.from_hash(await r.hgetall(names.balance_key(user_id)))


async def _read_order(r: Client, user_id: str, token_id: str) -> Order | None:
    raw = await r.get(names.order_key(user_id, token_id))
    return None if raw is None else Order.from_dict(orjson.loads(raw))


# --- one round trip: compare-and-set on the user's version ------------------------------------------
# Lua cannot do exact decimal arithmetic, so Python stays the only arithmetic and the script only checks and
# writes. Every write of a user's ledger keys goes through ``_APPLY``, which bumps a version counter kept in the
# balance hash (field ``v``) in the same atomic step. A process remembers the last state it saw of a user
# (``_Seen``: version, balances, orders known at that version), computes from it and sends the writes with the
# version they were computed from: the script applies them only if that version is still current (and, when the
# step saw no order under the token, no order is there), else answers the current state, and the step is
# recomputed. A warm cache is one round trip; a cold one or a stale one, two (as WATCH/MULTI was).
# A refusal or a no-op computed from remembered state is never trusted: it is computed again on fresh state.
# A version is ``<count>:<writer's nonce>``: after a rollback (a failover that lost writes not yet replicated)
# the count may come round again, the nonce does not, so a state remembered from the lost branch never matches.
# The version moves before the writes: a write that fails halfway (Redis does not roll a script back) still tells
# every process that the state changed.
# The writes travel as one JSON argument (string arguments only: Lua would print a large number as 1.7e+15),
# which costs the gateway a fraction of encoding each argument on its own.

VERSION = "v"
_APPLY = """
local v = redis.call('HGET', KEYS[1], 'v') or '0'
if v ~= ARGV[1] or (ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 1) then
  return {0, v, redis.call('HGETALL', KEYS[1]), KEYS[2] and redis.call('GET', KEYS[2]) or false}
end
local cmds = cjson.decode(ARGV[3])
local nv = (tonumber(string.match(v, '^%d+')) + 1) .. ':' .. ARGV[4]
redis.call('HSET', KEYS[1], 'v', nv)
for _, cmd in ipairs(cmds) do
  redis.call(unpack(cmd))
end
return {1, nv}
"""
_APPLY_SHA = hashlib.sha1(_APPLY.encode()).hexdigest()
_NONCE_PREFIX = secrets.token_hex(4)  # this process
_nonces = itertools.count()


def _count(version: str) -> int:
    return int(version.partition(":")[0])
CACHED_USERS = 4096
CACHED_ORDERS = 16  # per user


@dataclass(slots=True)
class _Seen:
    version: str
    account: Account
    orders: dict[str, Order]


_seen: weakref.WeakKeyDictionary[Any, OrderedDict[str, _Seen]] = weakref.WeakKeyDictionary()


def _remember(r: Client, user_id: str, version: str, account: Account, order: Order | None, *,
              wrote_from: str | None = None) -> None:
    """What was read at ``version``, or written by moving it from ``wrote_from`` (the orders remembered at
    ``wrote_from`` then still hold). An older state than the one remembered is dropped: concurrent calls finish in
    any order."""
    users = _seen.get(r)
    if users is None:
        users = _seen[r] = OrderedDict()
    seen = users.get(user_id)
    if seen is not None and _count(seen.version) > _count(version):
        return
    if seen is None or seen.version != version:
        kept = seen.orders if seen is not None and wrote_from == seen.version else {}
        seen = users[user_id] = _Seen(version, account, kept)
    else:
        seen.account = account
    users.move_to_end(user_id)
    if order is not None:
        seen.orders.pop(order.token_id, None)
        seen.orders[order.token_id] = order
        if len(seen.orders) > CACHED_ORDERS:
            del seen.orders[next(iter(seen.orders))]
    if len(users) > CACHED_USERS:
        users.popitem(last=False)


def forget(r: Client, user_id: str | None = None) -> None:
    """Drop what is remembered of ``user_id`` (every user when None); only ever costs a round trip."""
    users = _seen.get(r)
    if users is not None:
        if user_id is None:
            users.clear()
        else:
            users.pop(user_id, None)


@dataclass(frozen=True, slots=True)
class Change:
    """What a step writes: the commands (the version bump is the script's), and the balances and the order as
    written (None: not written), remembered for the next step."""

    writes: list[Cmd]
    account: Account | None
    order: Order | None


UserStep = Callable[[Account, Order | None], tuple[T, Change | None]]


@dataclass(frozen=True, slots=True)
class _State:
    version: str
    account: Account
    order: Order | None
    raw: bytes | None  # the order as stored
    fresh: bool  # read in this call (an atomic snapshot), not remembered


def _snapshot(reply: list[Any]) -> _State:
    _, version, flat, raw = reply
    order = None if not raw else Order.from_dict(orjson.loads(raw))
    return _State(_s(version), Account.from_hash(_hash(flat)), order, raw or None, True)


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode()
    raise TypeError(f"cannot send {type(v).__name__} to the script")


async def _call(r: Client, keys: Sequence[str], args: Sequence[Any], write: bool) -> list[Any]:
    """One ``_APPLY`` on the master of the user's slot (EVALSHA; EVAL once when the server lacks the script,
    which then applied nothing), with ``WAIT`` in the same round trip when writing under ``replica_acks``."""
    owner, conn = await _acquire(r, keys[0])
    clean = False
    try:
        acks = _acks.get(r) if write else None
        if acks and isinstance(owner, ClusterNode) and not _has_replica(r, keys[0]):
            acks = None  # a master without replicas (its own died, or it was just promoted)
        tail: list[Cmd] = [("WAIT", *acks)] if acks else []
        replies = await _exchange(conn, [("EVALSHA", _APPLY_SHA, len(keys), *keys, *args), *tail], keep_errors=True)
        if isinstance(replies[0], NoScriptError):
            replies = await _exchange(conn, [("EVAL", _APPLY, len(keys), *keys, *args), *tail], keep_errors=True)
        clean = True
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        if acks and _is_cluster(r) and replies[-1] < acks[0]:
            await refresh_topology(r)  # a replica is missing: learn which, rather than wait on each write
        return list(replies[0])
    except BaseException:
        if not clean:
            await conn.disconnect()  # replies may be left unread
        raise
    finally:
        await _release(owner, conn)


async def _run(r: Client, user_id: str, token_id: str | None, step: UserStep[T]) -> T:
    """``step`` (pure) on the user's balances and the order under ``token_id``, its writes applied atomically
    if nothing changed since the state it was computed from, in one round trip when that state is remembered.

    A connection lost while a write was out is not retried blindly: the same compare-and-set goes again, which
    cannot apply twice (if the first applied, the version moved on); when it finds the version moved, the write
    counts as applied only if the order stored is byte for byte the one it wrote, else the loss is raised (the
    outcome is unknown). On a cluster, MOVED replies and a master's failover are ridden through for up to
    ``CLUSTER_PATIENCE_S``, as ``transact`` does."""
    keys = [names.balance_key(user_id)] + ([] if token_id is None else [names.order_key(user_id, token_id)])
    cluster = _is_cluster(r)
    give_up = time.monotonic() + CLUSTER_PATIENCE_S
    users = _seen.get(r)
    seen = users.get(user_id) if users is not None else None
    state: _State | None = None
    if seen is not None:
        state = _State(seen.version, seen.account, None if token_id is None else seen.orders.get(token_id), None,
                       False)
    pending: tuple[_State, T, Change] | None = None  # a write whose outcome a lost connection hid
    lost: BaseException | None = None
    reconnects = 0
    attempt = 0
    while attempt < MAX_ATTEMPTS:
        if pending is None:
            if state is None:
                try:
                    state = _snapshot(await _call(r, keys, ("", "0"), False))
                except (RedisConnectionError, *_REDIRECTS):
                    reconnects += 1
                    if not cluster and reconnects > 1 or cluster and time.monotonic() > give_up:
                        raise
                    if cluster:
                        await _cluster_pause(r, reconnects)
                    continue
                _remember(r, user_id, state.version, state.account, state.order)
            try:
                result, change = step(state.account, state.order)
            except DomainError:
                if state.fresh:
                    raise
                state = None
                continue
            if change is None:
                if state.fresh:
                    return result
                state = None
                continue
            pending = (state, result, change)
        base, result, change = pending
        args = (base.version, "1" if token_id is not None and base.order is None else "0",
                orjson.dumps(change.writes, default=_text), f"{_NONCE_PREFIX}{next(_nonces):x}")
        try:
            reply = await _call(r, keys, args, True)
        except RedisConnectionError as e:
            reconnects += 1
            lost = e
            if not cluster and reconnects > 1 or cluster and time.monotonic() > give_up:
                raise
            if cluster:
                await _cluster_pause(r, reconnects)
            continue
        except _REDIRECTS:  # refused before running: nothing applied
            reconnects += 1
            if not cluster or time.monotonic() > give_up:
                raise
            await _cluster_pause(r, reconnects)
            continue
        if reply[0] == 1:
            _remember(r, user_id, _s(reply[1]), change.account or base.account, change.order,
                      wrote_from=base.version)
            return result
        state = _snapshot(reply)
        _remember(r, user_id, state.version, state.account, state.order)
        pending = None
        if lost is not None:
            if change.order is not None and state.raw == orjson.dumps(change.order.to_dict()):
                return result  # the lost write had applied
            raise lost
        if attempt:
            await asyncio.sleep(random.uniform(0, min(0.02, 0.0002 * 2 ** min(attempt, 10))))
        attempt += 1
    raise Busy()


def _hset(key: str, mapping: dict[str, str]) -> list[Cmd]:
    if not mapping:
        return []
    return [("HSET", key, *[x for kv in mapping.items() for x in kv])]


def _pub(r: Client) -> str:
    return "SPUBLISH" if _is_cluster(r) else "PUBLISH"


def _stored(order: Order, events: list[ledger.Event]) -> bytes:
    """``order.to_dict()`` as JSON, from the public form its event already holds when there is one."""
    for ev in events:
        pub = ev.get("order")
        if pub is not None and pub["token_id"] == order.token_id and pub["version"] == order.version:
            return orjson.dumps({"user_id": order.user_id, **pub})
    return orjson.dumps(order.to_dict())


def _writes(acct: Account, order: Order, events: list[ledger.Event], extra: Sequence[Cmd] = (),
            shards: int | None = None, *, pub: str) -> Change:
    """The order, the balances, the open index, ``extra``, the events (``pub``: PUBLISH, or SPUBLISH on a
    cluster: the user's channel is in the user's slot), and (unless the matcher made the change itself, or on a
    cluster: ``shards`` None) the order JSON on its matcher shard's intake stream, in the same transaction: the
    matcher cannot miss an order whose transaction applied."""
    raw = _stored(order, events)
    out: list[Cmd] = [("SET", names.order_key(order.user_id, order.token_id), raw)]
    out += _hset(names.balance_key(order.user_id), acct.to_hash())
    if order.is_open:
        out.append(("ZADD", names.open_orders_key(order.user_id), str(order.created_us), order.token_id))
    else:
        out.append(("ZREM", names.open_orders_key(order.user_id), order.token_id))
    out += extra
    out += [(pub, names.user_events_channel(order.user_id), orjson.dumps(ev)) for ev in events]
    if shards is not None:
        stream = names.intake_stream(names.matcher_shard(order.symbol, shards))
        out.append(("XADD", stream, "MAXLEN", "~", str(names.INTAKE_MAXLEN), "*", ORDER, raw))
    return Change(out, acct, order)


def not_found(token_id: str) -> DomainError:
    return DomainError("order_not_found", f"no order {token_id!r}")


# --- operations ----------------------------------------------------------------------------------

async def deposit(r: Client, user_id: str, asset: str, amount: Decimal, *,
                  max_total: Decimal | None = None) -> Account:
    key = names.balance_key(user_id)

    def step(account: Account, _: Order | None) -> tuple[Account, Change]:
        acct = ledger.deposit(account, asset, amount)
        if max_total is not None and acct.get(asset).total > max_total:
            raise DomainError("amount_too_large", f"{asset} balance would exceed {max_total}")
        return acct, Change(_hset(key, acct.to_hash()), acct, None)

    return await _run(r, user_id, None, step)


async def place(r: Client, rules: PairRules, *, user_id: str, token_id: str, side: ledger.Side,
                type_: ledger.OrderType, price: Decimal | None, quantity: Decimal, now_us: int,
                shards: int = 1) -> Order:
    def step(account: Account, existing: Order | None) -> tuple[Order, Change]:
        if existing is not None:
            if existing.reason == ledger.INTAKE_TIMEOUT and existing.version == 1:
                raise DomainError("intake_timeout", "the matcher did not hear of this order in time and refused it; "
                                  "place it again with a new token_id", retry_after_s=1)
            raise DomainError("duplicate_token_id", f"token_id {token_id!r} was already used")
        acct, order, events = ledger.place(account, rules, user_id=user_id,
                                           token_id=token_id, side=side, type_=type_, price=price,
                                           quantity=quantity, now_us=now_us)
        return order, _writes(acct, order, events, [("ZADD", names.orders_index_key(user_id), str(now_us), token_id)],
                              in_tx, pub=_pub(r))

    if not _is_cluster(r):
        in_tx: int | None = shards
        return await _apply(r, user_id, token_id, step)
    in_tx = None
    placing = {"symbol": rules.symbol, "side": side, "type": type_, "quantity": fmt(quantity),
               "price": None if price is None else fmt(price)}
    return await _through_intake(r, names.matcher_shard(rules.symbol, shards), user_id, token_id, placing, step)


async def cancel(r: Client, *, user_id: str, token_id: str, now_us: int, shards: int = 1) -> Order:
    def step(account: Account, order: Order | None) -> tuple[Order, Change]:
        if order is None:
            raise not_found(token_id)
        acct, o, events = ledger.cancel(account, order, now_us)
        return o, _writes(acct, o, events, shards=in_tx, pub=_pub(r))

    in_tx = None if _is_cluster(r) else shards
    return await _change(r, user_id, token_id, shards, step)


async def modify(r: Client, rules: Mapping[str, PairRules], *, user_id: str, token_id: str,
                 price: Decimal | None, quantity: Decimal | None, now_us: int, shards: int = 1) -> Order:
    """New price and/or quantity of an open limit order, checked against its pair's ``rules[symbol]``."""

    def step(account: Account, order: Order | None) -> tuple[Order, Change]:
        if order is None:
            raise not_found(token_id)
        acct, o, events = ledger.modify(account, rules[order.symbol], order,
                                        price=price, quantity=quantity, now_us=now_us)
        return o, _writes(acct, o, events, shards=in_tx, pub=_pub(r))

    in_tx = None if _is_cluster(r) else shards
    return await _change(r, user_id, token_id, shards, step)


# --- the intake on a cluster ------------------------------------------------------------------------
# A transaction stays in one slot: the user's. The shard's intake stream is elsewhere, so on a cluster an order
# change is announced on it first (an intent), then applied, then confirmed (the order JSON, naming the intent), or
# withdrawn when it was refused. The matcher holds an intent until it is confirmed; past a deadline it looks for the
# order itself, and when a placed order is still not there it fences the token (``fence``): a rejected record the
# late operation, which checks the user's version and that the token is free, cannot overwrite. So an order whose
# operation applied is never unknown to its matcher, whichever process dies where.

Step = UserStep[Order]


async def _apply(r: Client, user_id: str, token_id: str, step: Step) -> Order:
    return await _run(r, user_id, token_id, step)


async def _change(r: Client, user_id: str, token_id: str, shards: int, step: Step) -> Order:
    if not _is_cluster(r):
        return await _apply(r, user_id, token_id, step)
    current = await _read_order(r, user_id, token_id)
    if current is None:
        raise not_found(token_id)
    return await _through_intake(r, names.matcher_shard(current.symbol, shards), user_id, token_id, None, step)


async def _through_intake(r: Client, shard: int, user_id: str, token_id: str, placing: dict[str, Any] | None,
                          step: Step) -> Order:
    if not _is_cluster(r):
        return await _apply(r, user_id, token_id, step)
    stream = names.intake_stream(shard)
    intent = _s(await r.xadd(stream, {INTENT: orjson.dumps({"user_id": user_id, "token_id": token_id,
                                                             "placing": placing})},
                             maxlen=names.INTAKE_MAXLEN, approximate=True))
    try:
        order = await _apply(r, user_id, token_id, step)
    except DomainError:  # refused: nothing was written
        await _confirm(r, stream, {WITHDRAWN: intent})
        raise
    await _confirm(r, stream, {ORDER: orjson.dumps(order.to_dict()), CONFIRMS: intent})
    return order


async def _confirm(r: Client, stream: str, fields: dict[FieldT, EncodableT]) -> None:
    try:
        await r.xadd(stream, fields, maxlen=names.INTAKE_MAXLEN, approximate=True)
    except (RedisError, OSError) as e:  # the matcher finds out past its deadline
        log.warning("intake confirmation to %s lost: %r", stream, e)


async def fence(r: Client, *, user_id: str, token_id: str, placing: Mapping[str, Any] | None,
                now_us: int) -> Order | None:
    """Past an intent's deadline: the order as it stands, or (a placement that never arrived) the token fenced with
    a rejected record; None when there is no order and nothing to fence (a change of a missing order)."""
    def step(_: Account, order: Order | None) -> tuple[Order | None, Change | None]:
        if order is not None:
            return order, None
        if placing is None:
            return None, None
        price = placing.get("price")
        o, events = ledger.fenced(user_id=user_id, token_id=token_id, symbol=placing["symbol"], side=placing["side"],
                                  type_=placing["type"], price=None if price is None else Decimal(price),
                                  quantity=Decimal(placing["quantity"]), now_us=now_us)
        return o, Change([("SET", names.order_key(user_id, token_id), orjson.dumps(o.to_dict())),
                          ("ZADD", names.orders_index_key(user_id), str(now_us), token_id),
                          *[(_pub(r), names.user_events_channel(user_id), orjson.dumps(ev)) for ev in events]],
                         None, o)

    return await _run(r, user_id, token_id, step)


@dataclass(frozen=True, slots=True)
class Applied:
    order: Order
    fills: tuple[Fill, ...]
    decision: Decision


async def execute(r: Client, rules: PairRules, *, user_id: str, token_id: str,
                  decide: Callable[[Order], Decision], now_us: Callable[[], int]) -> Applied | None:
    """The matcher's settlement: re-read the order inside the transaction, decide on *that* state, apply once.

    Returns None when the order does not exist; when it is closed or the decision is to keep resting, the
    current order with a ``rest`` decision and nothing written."""

    def step(acct: Account, order: Order | None) -> tuple[Applied | None, Change | None]:
        if order is None:
            return None, None
        d = decide(order) if order.is_open else REST
        if d.outcome == "rest":
            return Applied(order, (), d), None
        fills: list[Fill] = []
        if d.outcome == "fill":
            acct, o, fills, events = ledger.settle(acct, rules, order, d.legs, d.liquidity, now_us())
        elif d.outcome == "expire":
            acct, o, events = ledger.expire(acct, order, now_us(), d.reason)
        else:
            acct, o, events = ledger.reject(acct, order, now_us(), d.reason)
        extra = [("RPUSH", names.fills_key(user_id), *[orjson.dumps(f.to_dict()) for f in fills])] if fills else []
        return Applied(o, tuple(fills), d), _writes(acct, o, events, extra, pub=_pub(r))

    return await _run(r, user_id, token_id, step)


# --- reads ---------------------------------------------------------------------------------------

async def get_account(r: Client, user_id: str) -> Account:
    return await _read_account(r, user_id)


async def get_order(r: Client, user_id: str, token_id: str) -> Order | None:
    return await _read_order(r, user_id, token_id)


async def _orders_by_tokens(r: Client, user_id: str, tokens: Sequence[Any]) -> list[Order]:
    return [o for o in await orders_by_keys(r, [(user_id, _s(t)) for t in tokens]) if o is not None]


async def list_orders(r: Client, user_id: str, *, status: str | None, limit: int, offset: int,
                      ) -> tuple[list[Order], int]:
    """Newest first. ``open`` reads the open index; other statuses filter the full index page by page."""
    if status is None or status == "open":
        key = names.orders_index_key(user_id) if status is None else names.open_orders_key(user_id)
        total = await r.zcard(key)
        tokens = await r.zrevrange(key, offset, offset + limit - 1)
        return await _orders_by_tokens(r, user_id, tokens), int(total)
    key = names.orders_index_key(user_id)
    out: list[Order] = []
    matched = 0
    start, page = 0, 500
    while True:
        tokens = await r.zrevrange(key, start, start + page - 1)
        if not tokens:
            break
        for o in await _orders_by_tokens(r, user_id, tokens):
            if o.status == status:
                if offset <= matched < offset + limit:
                    out.append(o)
                matched += 1
        start += page
    return out, matched


async def list_fills(r: Client, user_id: str, *, limit: int, offset: int) -> tuple[list[Fill], int]:
    """Newest first."""
    key = names.fills_key(user_id)
    total = int(await r.llen(key))
    hi = total - 1 - offset
    if hi < 0:
        return [], total
    lo = max(0, hi - limit + 1)
    raws = await r.lrange(key, lo, hi)
    return [Fill.from_dict(orjson.loads(x)) for x in reversed(raws)], total


async def open_orders(r: Client, user_id: str) -> list[Order]:
    return await _orders_by_tokens(r, user_id, await r.zrange(names.open_orders_key(user_id), 0, -1))


async def orders_by_keys(r: Client, keys: Sequence[tuple[str, str]]) -> list[Order | None]:
    """The orders named by ``(user_id, token_id)``, None where there is none."""
    if not keys:
        return []
    order_keys = [names.order_key(u, t) for u, t in keys]
    raws = await (r.mget_nonatomic(order_keys) if _is_cluster(r) else r.mget(order_keys))
    return [None if x is None else Order.from_dict(orjson.loads(x)) for x in raws]


async def scan_open_orders(r: Client) -> list[Order]:
    """Every open order of every user (the matcher's recovery)."""
    out: list[Order] = []
    async for key in r.scan_iter(match=names.open_scan_pattern(), count=500):
        out.extend(await open_orders(r, names.user_from_open_key(_s(key))))
    return out
