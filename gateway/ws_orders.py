"""Order management on the client WebSocket: the ``orders`` stream and the ``place_order``, ``cancel_order``,
``modify_order``, ``get_order`` and ``balance`` actions.

The same models and service calls as REST (``gateway.trading_models``, ``gateway.trading``), so the same
rules and error codes; the numbers arrive exact (the socket parses messages with ``gateway.strict_json``)
and amounts go out as exact JSON numbers, like every other WebSocket message. Importing this module
registers everything with ``gateway.ws``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway import trading, wire
from gateway.errors import ApiError
from gateway.order_events import OrderEvents, UserOrdersSource
from gateway.trading_models import BadRequest, ModifyOrderIn, PlaceOrderIn, parse
from gateway.ws import STREAM_HANDLERS, Connection, action
from gateway.wsproto import WsError

ENVELOPE = ("action", "id")


def _events(conn: Connection) -> OrderEvents:
    return conn.ws.app.state.order_events  # type: ignore[no-any-return]


def _orders_source(conn: Connection) -> UserOrdersSource:
    assert conn.user_id is not None
    return UserOrdersSource(_events(conn), conn.user_id)


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


async def _call(fn: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await fn()
    except (ApiError, BadRequest) as e:
        raise WsError(e.code, e.detail) from None


def _unknown(msg: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(str(k)[:40] for k in msg if k not in ENVELOPE and k not in allowed)
    if extra:
        raise WsError("unknown_field", f"unknown field(s): {', '.join(extra[:5])}")


@action("place_order")
async def _place_order(conn: Connection, msg: dict[str, Any]) -> None:
    assert conn.user_id is not None
    user, st = conn.user_id, conn.settings

    async def run() -> dict[str, Any]:
        body = parse(PlaceOrderIn, _body(msg))
        return await trading.place_order(conn.ws.app.state.redis, st, user, body, final=_events(conn),
                                         wait_s=st.gateway.order_final_wait_s)

    conn.ack(msg, order=wire.order_data(await _call(run)))


@action("cancel_order")
async def _cancel_order(conn: Connection, msg: dict[str, Any]) -> None:
    assert conn.user_id is not None
    _unknown(msg, ("token_id",))
    token_id = _token_id(msg)
    order = await _call(lambda: trading.cancel_order(conn.ws.app.state.redis, conn.settings, conn.user_id or "",
                                                     token_id))
    conn.ack(msg, order=wire.order_data(order))


@action("modify_order")
async def _modify_order(conn: Connection, msg: dict[str, Any]) -> None:
    assert conn.user_id is not None
    token_id = _token_id(msg)
    user = conn.user_id

    async def run() -> dict[str, Any]:
        body = parse(ModifyOrderIn, _body(msg, "token_id"))
        return await trading.modify_order(conn.ws.app.state.redis, conn.settings, user, token_id, body)

    conn.ack(msg, order=wire.order_data(await _call(run)))


@action("get_order")
async def _get_order(conn: Connection, msg: dict[str, Any]) -> None:
    _unknown(msg, ("token_id",))
    token_id = _token_id(msg)
    order = await _call(lambda: trading.get_order(conn.ws.app.state.redis, conn.settings, conn.user_id or "",
                                                  token_id))
    conn.ack(msg, order=wire.order_data(order))


@action("balance")
async def _balance(conn: Connection, msg: dict[str, Any]) -> None:
    _unknown(msg, ())
    bal = await _call(lambda: trading.get_balance(conn.ws.app.state.redis, conn.settings, conn.user_id or ""))
    conn.ack(msg, **{kind: {a: wire.num(trading.Decimal(v)) for a, v in amounts.items()}
                     for kind, amounts in bal.items()})
