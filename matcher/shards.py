"""The matcher's shards in Redis: who holds which (leases), what each shard must see (its intake stream) and
which orders are open in it (its open set). No matching here; ``matcher.engine`` drives it.

- A shard is held through a lease (``SET NX PX``, renewed by its holder only). A matcher that stops renewing
  (killed, stopped, cut off) loses it when it expires and a standby takes the shard over.
- Every order change of the shard's pairs is appended to its intake stream by the order's own transaction
  (``shared.ledger_store``), so an applied change cannot be missed. The holder reads it through the consumer group
  ``names.INTAKE_GROUP``; what a dead holder read but never acknowledged is claimed by the next one.
- The open set lists the shard's open orders, kept by the holder in the same transaction as the acknowledgement of
  the intake entries that opened or closed them: a takeover reads it instead of scanning every user's keys. It is
  built once by a full scan (an older deployment, or a new shard count), marked done by ``shard_indexed_key``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from shared import ledger_store, names
from shared.ledger import Order
from shared.redis_conn import Client


@dataclass(frozen=True, slots=True)
class Entry:
    """One intake stream entry: an order change (``order``, its JSON); on a cluster also an intent (``intent``)
    or the confirmation (``order`` and ``settles``) or withdrawal (``settles`` alone) of one."""
    id: str
    order: bytes = b""
    intent: bytes = b""
    settles: str = ""

# Take a free lease or renew our own (ours also after a reconnect: the id stays); release only our own.
_TAKE = """
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def member(user_id: str, token_id: str) -> str:
    return f"{user_id} {token_id}"


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class Leases:
    """The shards this matcher (``me``) holds, renewed or taken in rounds."""

    def __init__(self, r: Client, total: int, me: str, lease_ms: int) -> None:
        self.r = r
        self.total = total
        self.me = me
        self.lease_ms = lease_ms
        self.held: set[int] = set()
        self._take = r.register_script(_TAKE)
        self._release = r.register_script(_RELEASE)

    async def round(self) -> tuple[list[int], list[int]]:
        """Renew what is held, try to take what is free: (shards gained, shards lost)."""
        gained: list[int] = []
        lost: list[int] = []
        for n in range(self.total):
            ours = bool(await self._take(keys=[names.lease_key(n)], args=[self.me, self.lease_ms]))
            if ours and n not in self.held:
                self.held.add(n)
                gained.append(n)
            elif not ours and n in self.held:
                self.held.discard(n)
                lost.append(n)
        return gained, lost

    async def release_all(self) -> None:
        for n in sorted(self.held):
            await self._release(keys=[names.lease_key(n)], args=[self.me])
        self.held.clear()


async def ensure_group(r: Client, shard: int) -> None:
    """The consumer group, reading from the stream's start when it is new (nothing written before is skipped)."""
    try:
        await r.xgroup_create(names.intake_stream(shard), names.INTAKE_GROUP, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def _field(fields: Mapping[Any, Any], name: str) -> bytes:
    v = fields.get(name.encode(), fields.get(name, b""))
    return v if isinstance(v, bytes) else str(v).encode()


def _entries(raw: Iterable[Any]) -> list[Entry]:
    out: list[Entry] = []
    for entry_id, fields in raw:
        if fields is None:  # deleted (trimmed) while pending
            out.append(Entry(_text(entry_id)))
            continue
        settles = _field(fields, ledger_store.CONFIRMS) or _field(fields, ledger_store.WITHDRAWN)
        out.append(Entry(_text(entry_id), _field(fields, ledger_store.ORDER), _field(fields, ledger_store.INTENT),
                         settles.decode()))
    return out


async def claim_pending(r: Client, shard: int, me: str) -> list[Entry]:
    """Every entry read but not acknowledged by an earlier holder, now ours."""
    out: list[Entry] = []
    cursor = "0-0"
    while True:
        reply = await r.xautoclaim(names.intake_stream(shard), names.INTAKE_GROUP, me, min_idle_time=0,
                                   start_id=cursor, count=1000)
        cursor = _text(reply[0])
        out += _entries(reply[1])
        if cursor == "0-0":
            return out


async def read_new(r: Client, shard: int, me: str, block_ms: int, count: int = 500) -> list[Entry]:
    reply = await r.xreadgroup(names.INTAKE_GROUP, me, {names.intake_stream(shard): ">"}, count=count,
                               block=block_ms)
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [e for raw in reply.values() for e in _entries(raw[0] if raw and isinstance(raw[0], list) else raw)]
    return [e for _, raw in reply for e in _entries(raw)]


async def settle_entries(r: Client, shard: int, ids: Sequence[str], opened: Sequence[str],
                         closed: Sequence[str]) -> None:
    """Record what the entries opened and closed, and acknowledge them, in one transaction."""
    if not ids and not opened and not closed:
        return
    key = names.shard_open_key(shard)
    writes: list[ledger_store.Cmd] = []
    if opened:
        writes.append(("ZADD", key, *[x for m in opened for x in (0, m)]))
    if closed:
        writes.append(("ZREM", key, *closed))
    if ids:
        writes.append(("XACK", names.intake_stream(shard), names.INTAKE_GROUP, *ids))
    await ledger_store.transact(r, [key], [], lambda _: (None, writes))


async def forget(r: Client, shard: int, closed: Sequence[str]) -> None:
    if closed:
        await r.zrem(names.shard_open_key(shard), *closed)


async def open_orders(r: Client, shard: int, total: int) -> list[Order]:
    """The shard's open orders, from its open set (built by one full scan the first time)."""
    key = names.shard_open_key(shard)
    done = names.shard_indexed_key(shard, total)
    if not await r.exists(done):
        found = [o for o in await ledger_store.scan_open_orders(r) if names.matcher_shard(o.symbol, total) == shard]
        if found:
            await r.zadd(key, {member(o.user_id, o.token_id): 0 for o in found})
        await r.set(done, 1)
    keys: list[tuple[str, str]] = []
    for m in await r.zrange(key, 0, -1):
        if not isinstance(m, bytes | str):  # no scores asked for: plain members
            continue
        user_id, _, token_id = _text(m).partition(" ")
        keys.append((user_id, token_id))
    orders: list[Order] = []
    stale: list[str] = []
    for k, o in zip(keys, await ledger_store.orders_by_keys(r, keys), strict=True):
        if o is None or not o.is_open:
            stale.append(member(*k))
        else:
            orders.append(o)
    await forget(r, shard, stale)
    return orders
