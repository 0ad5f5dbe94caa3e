"""Users' order events in one gateway process, for whoever listens: the WebSocket's ``orders`` stream and the
final-state waits of market and IOC orders.

One ``RedisHub`` subscribes ``orders:events:{u:<user_id>}`` (``shared.names.user_events_channel``; on a cluster a
shard channel in the user's slot, ``SSUBSCRIBE``d like any other), reference counted: the first listener of a user
(or the first order waiting for its final state) subscribes the channel, the last one leaving unsubscribes. Each event is decoded once into an ``OrderEvent`` and handed to every
listener of its user; listeners must not block (the WebSocket's only appends to its queues).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import orjson

from shared import names
from shared.ledger import OrderEvent
from shared.pubsub import RedisHub

log = logging.getLogger(__name__)


class Listener(Protocol):
    def on_event(self, event: OrderEvent) -> None: ...

    def on_resync(self) -> None:
        """The gateway lost its Redis connection and subscribed again: events in between are gone."""


class OrderEvents:
    def __init__(self, redis_url: str, cluster: bool = False) -> None:
        self.hub = RedisHub(redis_url, cluster, self.dispatch, on_resubscribed=self.resync)
        self._users: dict[str, str] = {}  # channel -> user id
        self._listeners: dict[str, set[Listener]] = {}
        self._waiters: dict[tuple[str, str], set[asyncio.Future[OrderEvent]]] = {}
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

    async def listen(self, user_id: str, listener: Listener) -> None:
        """From now on ``listener`` gets every event of ``user_id`` (once this returns, none is missed)."""
        await self._acquire(user_id)
        self._listeners.setdefault(user_id, set()).add(listener)

    async def unlisten(self, user_id: str, listener: Listener) -> None:
        listeners = self._listeners.get(user_id)
        if listeners is None or listener not in listeners:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[user_id]
        await self._release(user_id)

    @contextlib.asynccontextmanager
    async def watch(self, user_id: str, token_id: str) -> AsyncIterator[asyncio.Future[OrderEvent]]:
        """A future resolved with the order's final event (filled/expired/rejected/cancelled). The channel is
        subscribed when the block starts: place the order inside it."""
        fut: asyncio.Future[OrderEvent] = asyncio.get_running_loop().create_future()
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
            ev = OrderEvent.from_dict(orjson.loads(raw), user_id)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ArithmeticError):
            self.bad_messages += 1
            log.debug("bad order event on %s", channel)
            return
        for listener in self._listeners.get(user_id, ()):
            listener.on_event(ev)
        if ev.is_final:
            for fut in self._waiters.get((user_id, ev.order.token_id), ()):
                if not fut.done():
                    fut.set_result(ev)

    def resync(self) -> None:
        """Pub/sub is at-most-once: after a reconnect every listener is told that events may be missing."""
        self.resyncs += 1
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.on_resync()
