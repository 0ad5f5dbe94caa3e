"""Order management on the client WebSocket: the ``orders`` stream and the ``place_order``, ``cancel_order``,
``modify_order``, ``get_order`` and ``balance`` actions.

The same models and service calls as REST (``gateway.trading_models``, ``gateway.trading``), so the same
rules and error codes; the numbers arrive exact (the socket parses messages with ``gateway.strict_json``)
and amounts go out as exact JSON numbers, like every other WebSocket message. Importing this module
registers everything with ``gateway.ws``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import redis.asyncio as aioredis

from gateway import trading, wire
from gateway.errors import ApiError
from gateway.order_events import OrderEvents, UserOrdersSource
from gateway.trading_models import BadRequest, ModifyOrderIn, PlaceOrderIn, parse
from gateway.ws import STREAM_HANDLERS, Connection, action
from gateway.wsproto import WsError
from shared.settings import Settings

ENVELOPE = ("action", "id")


def _events(conn: Connection) -> OrderEvents:
    return conn.ws.app.state.order_events  # type: ignore[no-any-return]


def _user(conn: Connection) -> str:
    assert conn.user_id is not None  # the dispatcher refuses these actions before authentication
    return conn.user_id


def _orders_source(conn: Connection) -> UserOrdersSource:
    return UserOrdersSource(_events(conn), _user(conn))


STREAM_HANDLERS["orders"] = _orders_source


def _body(msg: dict[str, Any], *exclude: str) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k not in ENVELOPE and k not in exclude}


def _token_id(msg: dict[str, Any]) -> str:
    t = msg.get("token_id")
    if t is None:
        raise WsError("missing_field", "token_id is required")
    if not isinstance(t, str):
        raise WsError("invalid_field", "token_id must be a string")
    return t


@contextlib.contextmanager
def _as_ws_error() -> Iterator[None]:
    """REST's errors (same codes and details) raised as the socket's."""
    try:
        yield
    except (ApiError, BadRequest) as e:
        raise WsError(e.code, e.detail) from None


def _unknown(msg: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(str(k)[:40] for k in msg if k not in ENVELOPE and k not in allowed)
    if extra:
        raise WsError("unknown_field", f"unknown field(s): {', '.join(extra[:5])}")


@action("place_order")
async def _place_order(conn: Connection, msg: dict[str, Any]) -> None:
    st = conn.settings
    with _as_ws_error():
        body = parse(PlaceOrderIn, _body(msg))
        order = await trading.place_order(conn.ws.app.state.redis, st, _user(conn), body, final=_events(conn),
                                          wait_s=st.gateway.order_final_wait_s)
    conn.ack(msg, order=wire.order_data(order))


OrderCall = Callable[[aioredis.Redis, Settings, str, str], Awaitable[dict[str, Any]]]


async def _by_token(conn: Connection, msg: dict[str, Any], call: OrderCall) -> None:
    """An action on one order named by ``token_id`` and nothing else."""
    _unknown(msg, ("token_id",))
    token_id = _token_id(msg)
    with _as_ws_error():
        order = await call(conn.ws.app.state.redis, conn.settings, _user(conn), token_id)
    conn.ack(msg, order=wire.order_data(order))


@action("cancel_order")
async def _cancel_order(conn: Connection, msg: dict[str, Any]) -> None:
    await _by_token(conn, msg, trading.cancel_order)


@action("get_order")
async def _get_order(conn: Connection, msg: dict[str, Any]) -> None:
    await _by_token(conn, msg, trading.get_order)


@action("modify_order")
async def _modify_order(conn: Connection, msg: dict[str, Any]) -> None:
    token_id = _token_id(msg)
    with _as_ws_error():
        body = parse(ModifyOrderIn, _body(msg, "token_id"))
        order = await trading.modify_order(conn.ws.app.state.redis, conn.settings, _user(conn), token_id, body)
    conn.ack(msg, order=wire.order_data(order))


@action("balance")
async def _balance(conn: Connection, msg: dict[str, Any]) -> None:
    _unknown(msg, ())
    with _as_ws_error():
        bal = await trading.get_balance(conn.ws.app.state.redis, conn.settings, _user(conn))
    conn.ack(msg, **wire.balance_data(bal))
