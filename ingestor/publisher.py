"""Batched publishing to Redis that never blocks the WebSocket reader.

``submit()`` is synchronous: it encodes the messages and appends them to the pending batch. One flush
task sends whatever accumulated as ONE Lua call (``PUBLISH`` each message on its channel, then ``SET`` the
latest bbo/book per key, conflated within the batch); while that call is in flight, new frames keep
arriving into the next batch, so batches grow by themselves under bursts. If Redis is slow or away the
pending batch is capped at ``max_pending`` messages: the oldest are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from ingestor.parsing import MdMessage
from ingestor.stats import RateLimitedLog
from shared import names
from shared.schema import FeedStatus, encode

log = logging.getLogger("ingestor.publisher")

# KEYS: the md:last:* keys to set; ARGV[1] = n, then n (channel, payload) pairs, then one value per key.
_SCRIPT = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  redis.call('PUBLISH', ARGV[2 + 2 * i], ARGV[3 + 2 * i])
end
local off = 1 + 2 * n
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[off + i])
end
return n
"""

_LAST_KINDS = frozenset(("bbo", "book"))  # kept as snapshots for newcomers; trades are only streamed


class Publisher:
    def __init__(self, redis: aioredis.Redis, exchange: str, *, max_batch: int = 2000,
                 max_pending: int = 200_000, status_key: str | None = None) -> None:
        """``status_key``: the status hash (default ``md:feed:<exchange>``; a shard has its own)."""
        self.redis = redis
        self.exchange = exchange
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._script = redis.register_script(_SCRIPT)
        self._pending: list[tuple[bytes, bytes, bytes | None]] = []  # (channel, payload, last key or None)
        self._status_fields: dict[FieldT, EncodableT] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one batch in flight at a time keeps messages in order
        self._routes: dict[tuple[str, str], tuple[bytes, bytes | None]] = {}
        self._status_channel = names.status_channel(exchange).encode()
        self._status_key = status_key or names.status_key(exchange)
        self._errlog = RateLimitedLog(log, 10.0)
        self.published = 0
        self.dropped = 0
        self.errors = 0
        self.batches = 0
        self.on_batch: Callable[[int], object] | None = None  # called with each batch's size (metrics)

    def _route(self, kind: str, symbol: str) -> tuple[bytes, bytes | None]:
        r = self._routes.get((kind, symbol))
        if r is None:
            last = names.md_last_key(kind, self.exchange, symbol).encode() if kind in _LAST_KINDS else None
            r = self._routes[(kind, symbol)] = (names.md_channel(kind, self.exchange, symbol).encode(), last)
        return r

    def submit(self, msgs: Iterable[MdMessage]) -> None:
        pending = self._pending
        for m in msgs:
            channel, last = self._route(m.type, m.symbol)
            pending.append((channel, encode(m), last))
        self._after_submit()

    def submit_status(self, status: FeedStatus, fields: Mapping[str, str | int]) -> None:
        """A FeedStatus on the status channel, and the status hash fields to write with the next batch."""
        self._pending.append((self._status_channel, encode(status), None))
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
            try:
                if batch:
                    await self._send(batch)
                if fields:
                    await self.redis.hset(self._status_key, mapping=fields)
            except (RedisError, OSError) as e:
                self.errors += 1
                self.dropped += len(batch)
                self._errlog.warning("redis", "%s: publishing to Redis failed (%d messages lost): %r",
                                     self.exchange, len(batch), e)
                await asyncio.sleep(0.2)

    async def _send(self, batch: list[tuple[bytes, bytes, bytes | None]]) -> None:
        args: list[bytes | int] = [len(batch)]
        last: dict[bytes, bytes] = {}
        for channel, payload, key in batch:
            args.append(channel)
            args.append(payload)
            if key is not None:
                last[key] = payload
        args.extend(last.values())
        await self._script(keys=list(last), args=args)
        self.published += len(batch)
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(len(batch))


def status_hash_fields(**fields: object) -> dict[str, str | int]:
    """Hash values must be str/int/bytes; anything else is JSON-encoded."""
    out: dict[str, str | int] = {}
    for k, v in fields.items():
        out[k] = v if isinstance(v, (str, int)) and not isinstance(v, bool) else orjson.dumps(v).decode()
    return out
