"""Batched publishing to Redis that never blocks the WebSocket reader.

``submit()`` is synchronous: it encodes the messages and appends them to the pending batch. One flush
task sends whatever accumulated as ONE Lua call (``PUBLISH`` each message on its channel, then ``SET`` the
latest bbo/book per key, conflated within the batch); while that call is in flight, new frames keep
arriving into the next batch, so batches grow by themselves under bursts. If Redis is slow or away the
pending batch is capped at ``max_pending`` messages: the oldest are dropped and counted.

On a Redis Cluster a script may only touch its own slot (an ``SPUBLISH`` to a channel another master owns fails:
"non local key"), so the batch is cut by partition (``Keyspace.tag``: a pair's channels and snapshot keys share
one slot; an exchange's status channel has its own): one call per partition, routed by a key of its slot, all of
them at once. A channel's messages stay in one call, in order, and one batch is in flight at a time, as on one
server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisClusterException, RedisError
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


class Publisher:
    def __init__(self, redis: Client, exchange: str, *, keyspace: names.Keyspace = names.SINGLE,
                 max_batch: int = 2000, max_pending: int = 200_000, status_key: str | None = None) -> None:
        """``status_key``: the status hash (default ``md:feed:<exchange>``; a shard has its own)."""
        self.redis = redis
        self.exchange = exchange
        self.keyspace = keyspace
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._script = redis.register_script(_SCRIPT)
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
        for m in msgs:
            channel, last, route = self._route(m.type, m.symbol)
            pending.append((channel, encode(m), last, route))
        self._after_submit()

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
            self._wake.clear()
            await self.flush()
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
                self._errlog.warning("redis", "%s: publishing to Redis failed (%d messages lost): %r",
                                     self.exchange, lost, error)
                await asyncio.sleep(0.2)

    async def _send(self, batch: list[Item]) -> tuple[int, BaseException | None]:
        """The batch's script calls, all at once (several only on a cluster); (messages lost, the first error)."""
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
        if lost < len(batch):
            self.published += len(batch) - lost
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(batch) - lost)
        return lost, error


def status_hash_fields(**fields: object) -> dict[str, str | int]:
    """Hash values must be str/int/bytes; anything else is JSON-encoded."""
    out: dict[str, str | int] = {}
    for k, v in fields.items():
        out[k] = v if isinstance(v, (str, int)) and not isinstance(v, bool) else orjson.dumps(v).decode()
    return out
