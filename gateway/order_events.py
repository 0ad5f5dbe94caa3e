"""Users' order events in one gateway process: the WebSocket ``orders`` stream and the final-state waits.

One ``RedisHub`` subscribes ``orders:events:<user_id>`` (``shared.names.user_events_channel``), reference
counted: the first WebSocket subscription of a user (or the first order waiting for its final state)
subscribes the channel, the last one leaving unsubscribes. Each event is decoded and serialised once per
message and appended to every subscribed connection's queue with ``put_critical``: an order event is never
dropped; a client too slow to take it is closed (4009) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway import wire
from gateway.fanout import ClientQueue, RedisHub
from gateway.wsproto import Spec
from shared import names
from shared.settings import Settings

log = logging.getLogger(__name__)

RESYNC_REASON = ("the gateway reconnected to Redis: order events may have been missed; "
                 "re-read GET /orders?status=open and GET /balance")
TERMINAL = frozenset({"filled", "expired", "rejected", "cancelled"})


class OrderEvents:
    def __init__(self, settings: Settings) -> None:
        self.hub = RedisHub(settings.redis.url, self.dispatch, on_resubscribed=self.resync)
        self._users: dict[str, str] = {}  # channel -> user id
        self._queues: dict[str, set[ClientQueue]] = {}
        self._waiters: dict[tuple[str, str], set[asyncio.Future[dict[str, Any]]]] = {}
        self.bad_messages = 0
        self.resyncs = 0

    async def start(self) -> None:
        await self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()

    async def _acquire(self, user_id: str) -> None:
        channel = names.user_events_channel(user_id)
        self._users[channel] = user_id
        await self.hub.acquire(channel)

    async def _release(self, user_id: str) -> None:
        channel = names.user_events_channel(user_id)
        if await self.hub.release(channel):
            self._users.pop(channel, None)

    # -- the WebSocket stream ----------------------------------------------------------------------

    async def subscribe(self, user_id: str, queue: ClientQueue, ack: str) -> OrdersSubscription:
        await self._acquire(user_id)
        queue.put_critical(ack)
        self._queues.setdefault(user_id, set()).add(queue)
        return OrdersSubscription(self, user_id, queue)

    async def _unsubscribe(self, user_id: str, queue: ClientQueue) -> None:
        qs = self._queues.get(user_id)
        if qs is not None:
            qs.discard(queue)
            if not qs:
                del self._queues[user_id]
        await self._release(user_id)

    # -- final states ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watch(self, user_id: str, token_id: str) -> AsyncIterator[asyncio.Future[dict[str, Any]]]:
        """A future resolved with the order's terminal event (filled/expired/rejected/cancelled). The channel
        is subscribed when the block starts: place the order inside it."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        key = (user_id, token_id)
        self._waiters.setdefault(key, set()).add(fut)
        await self._acquire(user_id)
        try:
            yield fut
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[key]
            if not fut.done():
                fut.cancel()
            await self._release(user_id)

    # -- the hub's reader --------------------------------------------------------------------------

    def dispatch(self, channel: str, raw: bytes) -> None:
        user_id = self._users.get(channel)
        if user_id is None:
            return
        try:
            ev = orjson.loads(raw)
            order = ev["order"]
            token_id = order["token_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.bad_messages += 1
            log.debug("bad order event on %s", channel)
            return
        queues = self._queues.get(user_id)
        if queues:
            frame = wire.order_event(ev)
            for q in queues:
                q.put_critical(frame)
        if ev.get("event") in TERMINAL:
            for fut in self._waiters.get((user_id, token_id), ()):
                if not fut.done():
                    fut.set_result(ev)


    def resync(self) -> None:
        """The hub lost its Redis connection and subscribed again: events published in between are gone (pub/sub
        is at-most-once), so every ``orders`` subscriber is told to re-read its orders and balance."""
        self.resyncs += 1
        frame = wire.push("resync", "orders", {"reason": RESYNC_REASON})
        for queues in self._queues.values():
            for q in queues:
                q.put_critical(frame)


class OrdersSubscription:
    def __init__(self, events: OrderEvents, user_id: str, queue: ClientQueue) -> None:
        self._events = events
        self._user_id = user_id
        self._queue = queue
        self._closed = False

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._events._unsubscribe(self._user_id, self._queue)


class UserOrdersSource:
    """The ``orders`` stream of one connection's user (a ``gateway.ws.StreamSource``)."""

    def __init__(self, events: OrderEvents, user_id: str) -> None:
        self._events = events
        self._user_id = user_id

    async def subscribe(self, spec: Spec, queue: ClientQueue, ack: str) -> OrdersSubscription:
        return await self._events.subscribe(self._user_id, queue, ack)
