"""Batched publishing to Redis that never blocks the WebSocket reader.

``submit()`` is synchronous: it encodes the messages and appends them to the pending batch. One flush
task sends whatever accumulated as ONE Lua call (``PUBLISH`` each message on its channel, then ``SET`` the
latest bbo/book per key, conflated within the batch); while that call is in flight, new frames keep
arriving into the next batch, so batches grow by themselves under bursts. If Redis is slow or away the
pending batch is capped at ``max_pending`` messages: the oldest are dropped and counted.

On one server the call is written as RESP built here (each channel's and key's bulk string encoded once) on a
connection of its own, taken from redis-py's pool settings (address, auth, database, timeouts): no per-command
packing, no pool round trip. A script unknown to the server (a restarted Redis) is sent again with its source.

On a Redis Cluster a script may only touch its own slot (an ``SPUBLISH`` to a channel another master owns fails:
"non local key"), so the batch is cut by partition (``Keyspace.tag``: a pair's channels and snapshot keys share
one slot; an exchange's status channel has its own): one call per partition, routed by a key of its slot, all of
them at once. A channel's messages stay in one call, in order, and one batch is in flight at a time, as on one
server.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from ingestor.parsing import MdMessage
from ingestor.stats import RateLimitedLog
from shared import names
from shared.redis_conn import Client
from shared.schema import FeedStatus, encode

log = logging.getLogger("ingestor.publisher")

# ARGV[1]: PUBLISH or SPUBLISH; ARGV[2] = n; ARGV[3] = r, the number of leading KEYS that only route the call (to
# a cluster slot); then n (channel, payload) pairs, then one value per remaining key (the md:last:* keys to set).
_SCRIPT = """
local cmd, n, r = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 0, n - 1 do
  redis.call(cmd, ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
local off = 3 + 2 * n - r
for i = r + 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[off + i])
end
return n
"""

_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest().encode()
_EVALSHA = b"$7\r\nEVALSHA\r\n$40\r\n" + _SHA + b"\r\n"
_EVAL = b"$4\r\nEVAL\r\n" + b"$%d\r\n%b\r\n" % (len(_SCRIPT.encode()), _SCRIPT.encode())
_LAST_KINDS = frozenset(("bbo", "book"))  # kept as snapshots for newcomers; trades are only streamed
_REDIS_ERRORS = (RedisError, RedisClusterException, OSError)

# (channel, payload, snapshot key or None, the key routing its partition's call: b"" on one server)
Item = tuple[bytes, bytes, bytes | None, bytes]


@dataclass(frozen=True, slots=True)
class ScriptCall:
    keys: list[bytes]
    args: list[bytes | int | str]
    messages: int


def script_calls(batch: Sequence[Item], publish: str) -> list[ScriptCall]:
    """The batch as script calls: one per routing key (one in all on one server), each channel's messages in
    their order, each snapshot key set once to its latest payload."""
    groups: dict[bytes, list[Item]] = {}
    for item in batch:
        groups.setdefault(item[3], []).append(item)
    calls: list[ScriptCall] = []
    for route, items in groups.items():
        routing = [route] if route else []
        args: list[bytes | int | str] = [publish, len(items), len(routing)]
        last: dict[bytes, bytes] = {}
        for channel, payload, key, _ in items:
            args.append(channel)
            args.append(payload)
            if key is not None:
                last[key] = payload
        args.extend(last.values())
        calls.append(ScriptCall(routing + list(last), args, len(items)))
    return calls


def bulk(b: bytes) -> bytes:
    """A RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(b), b)


def resp_call(batch: Sequence[Item], publish: bytes, bulks: dict[bytes, bytes], head: bytes = _EVALSHA) -> list[bytes]:
    """The batch (one server: no routing key) as ONE script call in RESP, the same call ``script_calls`` makes:
    ``head`` (EVALSHA + digest, or EVAL + source), the snapshot keys, then the arguments. ``bulks`` caches the
    bulk strings of channels and keys."""
    body: list[bytes] = [publish, b"$%d\r\n%d\r\n" % (len(str(len(batch))), len(batch)), b"$1\r\n0\r\n"]
    last: dict[bytes, bytes] = {}
    for channel, payload, key, _ in batch:
        b = bulks.get(channel)
        if b is None:
            b = bulks[channel] = bulk(channel)
        body.append(b)
        body.append(b"$%d\r\n%b\r\n" % (len(payload), payload))
        if key is not None:
            last[key] = payload
    keys: list[bytes] = []
    for key, payload in last.items():
        b = bulks.get(key)
        if b is None:
            b = bulks[key] = bulk(key)
        keys.append(b)
        body.append(b"$%d\r\n%b\r\n" % (len(payload), payload))
    nk = b"%d" % len(keys)
    return [b"*%d\r\n" % (3 + 2 * len(keys) + 3 + 2 * len(batch)), head, b"$%d\r\n%b\r\n" % (len(nk), nk), *keys, *body]


class Publisher:
    def __init__(self, redis: Client, exchange: str, *, keyspace: names.Keyspace = names.SINGLE,
                 max_batch: int = 2000, max_pending: int = 200_000, status_key: str | None = None,
                 linger_s: float = 0.0) -> None:
        """``status_key``: the status hash (default ``md:feed:<exchange>``; a shard has its own). ``linger_s``: how
        long the run loop lets a batch gather after its first message (fewer, larger calls)."""
        self.linger_s = linger_s
        self.redis = redis
        self.exchange = exchange
        self.keyspace = keyspace
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._script = redis.register_script(_SCRIPT)
        # One server: our own connection and hand-built calls. A cluster: redis-py routes each partition's call.
        self._conn: AbstractConnection | None = (
            redis.connection_pool.make_connection() if isinstance(redis, aioredis.Redis) else None)
        self._publish = bulk(keyspace.publish.encode())
        self._bulks: dict[bytes, bytes] = {}
        self._pending: list[Item] = []
        self._status_fields: dict[FieldT, EncodableT] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one batch in flight at a time keeps messages in order
        self._routes: dict[tuple[str, str], tuple[bytes, bytes | None, bytes]] = {}
        status = keyspace.status_channel(exchange)
        self._status_route = (status.encode(), self._slot_key(status))
        self._status_key = status_key or names.status_key(exchange)
        self._errlog = RateLimitedLog(log, 10.0)
        self.published = 0
        self.dropped = 0
        self.errors = 0
        self.batches = 0
        self.on_batch: Callable[[int], object] | None = None  # called with each batch's size (metrics)

    def _slot_key(self, channel: str) -> bytes:
        return self.keyspace.slot_key(channel).encode() if self.keyspace.cluster else b""

    def _route(self, kind: str, symbol: str) -> tuple[bytes, bytes | None, bytes]:
        r = self._routes.get((kind, symbol))
        if r is None:
            ks = self.keyspace
            channel = ks.md_channel(kind, self.exchange, symbol)
            last = ks.md_last_key(kind, self.exchange, symbol).encode() if kind in _LAST_KINDS else None
            r = self._routes[(kind, symbol)] = (channel.encode(), last, self._slot_key(channel))
        return r

    def submit(self, msgs: Iterable[MdMessage]) -> None:
        pending = self._pending
        routes = self._routes
        for m in msgs:
            r = routes.get((m.type, m.symbol)) or self._route(m.type, m.symbol)
            pending.append((r[0], encode(m), r[1], r[2]))
        if len(pending) > self.max_pending:
            self._after_submit()
        else:
            self._wake.set()

    def submit_status(self, status: FeedStatus, fields: Mapping[str, str | int]) -> None:
        """A FeedStatus on the status channel, and the status hash fields to write with the next batch."""
        channel, route = self._status_route
        self._pending.append((channel, encode(status), None, route))
        self._status_fields.update(fields)
        self._after_submit()

    def _after_submit(self) -> None:
        if len(self._pending) > self.max_pending:
            cut = len(self._pending) - self.max_pending // 2
            del self._pending[:cut]
            self.dropped += cut
            self._errlog.warning("overflow", "%s: Redis is not keeping up; dropped %d oldest messages",
                                 self.exchange, cut)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            if self.linger_s and len(self._pending) < self.max_batch:
                await asyncio.sleep(self.linger_s)
            self._wake.clear()
            async with self._lock:
                await self._flush_one()
            if self._pending or self._status_fields:
                self._wake.set()  # what arrived during the call lingers in its turn, then goes
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py can turn a cancellation that lands inside a command into a connection error (which
                # flush() counts and survives): honour the cancel here, or shutdown would wait forever.
                raise asyncio.CancelledError

    async def flush(self) -> None:
        """Send everything submitted so far (the run loop, tests, shutdown)."""
        async with self._lock:
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        while self._pending or self._status_fields:
            await self._flush_one()

    async def _flush_one(self) -> None:
        """One batch (at most ``max_batch`` messages) and the status hash fields."""
        batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        fields, self._status_fields = self._status_fields, {}
        lost, error = await self._send(batch) if batch else (0, None)
        if fields:
            try:
                await self.redis.hset(self._status_key, mapping=fields)
            except _REDIS_ERRORS as e:
                error = error or e
        if error is not None:
            self.errors += 1
            self.dropped += lost
            self._errlog.warning("redis", "%s: publishing to Redis failed (%d messages lost): %s: %s",
                                 self.exchange, lost, type(error).__name__, error)
            await asyncio.sleep(0.2)

    async def _send(self, batch: list[Item]) -> tuple[int, BaseException | None]:
        """The batch's script calls, all at once (several only on a cluster); (messages lost, the first error)."""
        if self._conn is not None:
            error = await self._send_one(self._conn, batch)
            lost = len(batch) if error is not None else 0
        else:
            lost, error = await self._send_cluster(batch)
        if lost < len(batch):
            self.published += len(batch) - lost
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(batch) - lost)
        return lost, error

    async def _send_one(self, conn: AbstractConnection, batch: list[Item]) -> BaseException | None:
        try:
            await conn.send_packed_command(resp_call(batch, self._publish, self._bulks), check_health=False)
            try:
                await conn.read_response()
            except NoScriptError:  # a new or restarted server: the script's source, once
                await conn.send_packed_command(resp_call(batch, self._publish, self._bulks, _EVAL),
                                               check_health=False)
                await conn.read_response()
        except ResponseError as e:  # refused, its reply read: the connection is still in step
            return e
        except _REDIS_ERRORS as e:
            await conn.disconnect(nowait=True)  # a reply may be left unread: start afresh
            return e
        except BaseException:
            await conn.disconnect(nowait=True)  # cancelled mid-call: its reply would be taken for the next one's
            raise
        return None

    async def _send_cluster(self, batch: list[Item]) -> tuple[int, BaseException | None]:
        calls = script_calls(batch, self.keyspace.publish)
        results = await asyncio.gather(*(self._script(keys=c.keys, args=c.args) for c in calls),
                                       return_exceptions=True)
        lost, error = 0, None
        for call, res in zip(calls, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, _REDIS_ERRORS):
                    raise res
                lost += call.messages
                error = error or res
        return lost, error

    async def aclose(self) -> None:
        """Close our own connection (one server)."""
        if self._conn is not None:
            await self._conn.disconnect()


def status_hash_fields(**fields: object) -> dict[str, str | int]:
    """Hash values must be str/int/bytes; anything else is JSON-encoded."""
    out: dict[str, str | int] = {}
    for k, v in fields.items():
        out[k] = v if isinstance(v, (str, int)) and not isinstance(v, bool) else orjson.dumps(v).decode()
    return out
