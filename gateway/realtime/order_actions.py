"""Order management on the client WebSocket: the ``orders`` stream and the ``place_order``, ``cancel_order``,
``modify_order``, ``get_order`` and ``balance`` actions.

The same request models and service (``gateway.services``) as REST, so the same rules and error codes; the
numbers arrive exact (the socket parses messages with ``gateway.jsonio``) and amounts go out as exact JSON
numbers, like every other WebSocket message. Importing this module registers everything with
``gateway.realtime.connection``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.realtime import messages
from gateway.realtime.connection import STREAM_HANDLERS, Connection, action
from gateway.realtime.protocol import Spec, Subscription
from gateway.realtime.queue import ClientQueue
from gateway.services.order_events import OrderEvents
from gateway.services.requests import ModifyOrderIn, PlaceOrderIn, parse
from gateway.services.trading import Trading
from shared.errors import DomainError
from shared.ledger import Order, OrderEvent

ENVELOPE = ("action", "id")
RESYNC_REASON = ("the gateway reconnected to Redis: order events may have been missed; "
                 "re-read GET /orders?status=open and GET /balance")


class _UserOrders:
    """The ``orders`` subscribers of one user: one listener on the order events, each event framed once."""

    def __init__(self) -> None:
        self.queues: set[ClientQueue] = set()

    def on_event(self, event: OrderEvent) -> None:
        frame = messages.order_event(event)
        for q in self.queues:
            q.put_critical(frame)

    def on_resync(self) -> None:
        frame = messages.push_frame("resync", "orders", {"reason": RESYNC_REASON})
        for q in self.queues:
            q.put_critical(frame)


class OrdersStream:
    """The ``orders`` stream of every connection of this process."""

    def __init__(self, events: OrderEvents) -> None:
        self._events = events
        self._users: dict[str, _UserOrders] = {}

    async def subscribe(self, user_id: str, queue: ClientQueue, ack: str) -> Subscription:
        users = self._users.get(user_id)
        if users is None:
            users = self._users[user_id] = _UserOrders()
            await self._events.listen(user_id, users)
        queue.put_critical(ack)
        users.queues.add(queue)
        return Subscription(lambda: self._unsubscribe(user_id, queue))

    async def _unsubscribe(self, user_id: str, queue: ClientQueue) -> None:
        users = self._users.get(user_id)
        if users is None:
            return
        users.queues.discard(queue)
        if not users.queues:
            del self._users[user_id]
            await self._events.unlisten(user_id, users)


class _UserSource:
    """The ``orders`` stream of one connection's user (a ``StreamSource``)."""

    def __init__(self, stream: OrdersStream, user_id: str) -> None:
        self._stream = stream
        self._user_id = user_id

    async def subscribe(self, spec: Spec, queue: ClientQueue, ack: str) -> Subscription:
        return await self._stream.subscribe(self._user_id, queue, ack)


def _trading(conn: Connection) -> Trading:
    trading: Trading = conn.ws.app.state.trading
    return trading


def _user(conn: Connection) -> str:
    assert conn.user_id is not None  # the dispatcher refuses these actions before authentication
    return conn.user_id


def _orders_source(conn: Connection) -> _UserSource:
    stream: OrdersStream = conn.ws.app.state.orders_stream
    return _UserSource(stream, _user(conn))


STREAM_HANDLERS["orders"] = _orders_source


def _body(msg: dict[str, Any], *exclude: str) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k not in ENVELOPE and k not in exclude}


def _token_id(msg: dict[str, Any]) -> str:
    t = msg.get("token_id")
    if t is None:
        raise DomainError("missing_field", "token_id is required")
    if not isinstance(t, str):
        raise DomainError("invalid_field", "token_id must be a string")
    return t


def _unknown(msg: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(str(k)[:40] for k in msg if k not in ENVELOPE and k not in allowed)
    if extra:
        raise DomainError("unknown_field", f"unknown field(s): {', '.join(extra[:5])}")


@action("place_order")
async def _place_order(conn: Connection, msg: dict[str, Any]) -> None:
    conn.require("trade")
    placed = await _trading(conn).place(_user(conn), parse(PlaceOrderIn, _body(msg)))
    conn.ack(msg, order=messages.order_data(placed.order, placed.fills))


async def _by_token(conn: Connection, msg: dict[str, Any],
                    call: Callable[[Trading, str, str], Awaitable[Order]]) -> None:
    """An action on one order named by ``token_id`` and nothing else."""
    _unknown(msg, ("token_id",))
    token_id = _token_id(msg)
    order = await call(_trading(conn), _user(conn), token_id)
    conn.ack(msg, order=messages.order_data(order))


@action("cancel_order")
async def _cancel_order(conn: Connection, msg: dict[str, Any]) -> None:
    conn.require("trade")
    await _by_token(conn, msg, Trading.cancel)


@action("get_order")
async def _get_order(conn: Connection, msg: dict[str, Any]) -> None:
    await _by_token(conn, msg, Trading.order)


@action("modify_order")
async def _modify_order(conn: Connection, msg: dict[str, Any]) -> None:
    conn.require("trade")
    token_id = _token_id(msg)
    order = await _trading(conn).modify(_user(conn), token_id, parse(ModifyOrderIn, _body(msg, "token_id")))
    conn.ack(msg, order=messages.order_data(order))


@action("balance")
async def _balance(conn: Connection, msg: dict[str, Any]) -> None:
    _unknown(msg, ())
    conn.ack(msg, **messages.balance_data(await _trading(conn).balance(_user(conn))))
