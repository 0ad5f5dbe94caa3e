"""Async client for Simple Router: every REST route (httpx) and the WebSocket ``/ws`` (websockets).

    async with SimpleRouterClient("http://127.0.0.1:8000") as client:
        await client.login("alice", "correct horse battery")
        async with client.stream() as ws:
            async for touch in ws.subscribe("best_touch", "BTCUSDT", exchange="all"):
                print(touch.bid_px, touch.ask_px)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Generator
from decimal import Decimal
from typing import Any, Generic, TypeVar

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from client.models import (
    ApiKey,
    Balance,
    BestTouch,
    Book,
    Ewma,
    Fill,
    Info,
    Json,
    Kline,
    Order,
    OrderEvent,
    Page,
    Resync,
    Trade,
    User,
    decimal_str,
    dumps,
    loads,
    parse_push,
)

Number = Decimal | int | str
T = TypeVar("T")


class ApiError(Exception):
    """The server said no. ``status`` is the HTTP status (None for a WebSocket error reply), ``code`` the
    stable error code, ``detail`` the readable sentence; ``errors`` lists each problem of a 422."""

    def __init__(self, status: int | None, code: str, detail: str, errors: list[Json] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status or 'ws'} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, r: httpx.Response) -> ApiError:
        try:
            body = loads(r.content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"detail": r.text[:200] or r.reason_phrase, "code": "http_error"}
        retry = r.headers.get("retry-after")
        return cls(r.status_code, str(body.get("code", "http_error")), str(body.get("detail", "")),
                   body.get("errors"), float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)


class StreamClosed(Exception):
    """The WebSocket closed while a request or a subscription was still waiting."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"WebSocket closed ({code}): {reason}" if code else f"WebSocket closed: {reason}")
        self.code = code
        self.reason = reason


def _order_body(token_id: str, symbol: str, side: str, quantity: Number, price: Number | None,
                type: str) -> Json:
    body: Json = {"token_id": token_id, "symbol": symbol, "side": side, "type": type,
                  "quantity": decimal_str(quantity)}
    if price is not None:
        body["price"] = decimal_str(price)
    return body


def _modify_body(price: Number | None, quantity: Number | None) -> Json:
    body: Json = {}
    if price is not None:
        body["price"] = decimal_str(price)
    if quantity is not None:
        body["quantity"] = decimal_str(quantity)
    return body


API_KEY_ENV = "SR_API_KEY"


class SimpleRouterClient:
    """REST calls are methods; ``stream()`` opens the WebSocket. ``login``/``register`` keep the token.

    A program can use an API key instead of a login (``api_key=``, or ``SimpleRouterClient.from_env()`` for the
    key in ``SR_API_KEY``): it is sent where a token would be, on REST and on the WebSocket."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, token: str | None = None,
                 api_key: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token or api_key
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    @classmethod
    def from_env(cls, base_url: str = "http://127.0.0.1:8000", **kw: Any) -> SimpleRouterClient:
        """A client with the API key of ``SR_API_KEY`` (none when unset: log in then)."""
        return cls(base_url, api_key=os.environ.get(API_KEY_ENV) or None, **kw)

    async def __aenter__(self) -> SimpleRouterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing ----------------------------------------------------------------------------------

    async def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """One REST call; the parsed JSON answer (decimals as ``Decimal``) or ``ApiError``."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        content = None
        if json is not None:
            content = dumps(json).encode()
            headers["Content-Type"] = "application/json"
        r = await self._http.request(method, path, content=content, headers=headers,
                                     params={k: v for k, v in (params or {}).items() if v is not None})
        if r.status_code >= 400:
            raise ApiError.from_response(r)
        return loads(r.content) if r.content else None

    # -- accounts ----------------------------------------------------------------------------------

    async def register(self, username: str, password: str) -> User:
        out = await self.request("POST", "/register", json={"username": username, "password": password})
        self.token = out["access_token"]
        return User.from_json(out["user"])

    async def login(self, username: str, password: str) -> str:
        out = await self.request("POST", "/login", json={"username": username, "password": password})
        self.token = out["access_token"]
        return self.token

    async def me(self) -> User:
        return User.from_json(await self.request("GET", "/me"))

    async def logout(self) -> None:
        """Revoke the client's token on every gateway (its WebSockets are closed with 4001) and forget it."""
        await self.request("POST", "/logout")
        self.token = None

    async def change_password(self, current: str, new: str) -> str:
        """Every token issued before is revoked; the client keeps the new one the answer carries."""
        out = await self.request("PUT", "/me/password", json={"current_password": current, "new_password": new})
        self.token = out["access_token"]
        return self.token

    async def create_api_key(self, name: str, scopes: tuple[str, ...] | list[str] = ("read",), *,
                             expires_in_s: int | None = None) -> ApiKey:
        """A new key (``.key`` holds it, shown this once). Scopes: ``read``, ``trade`` (implies read)."""
        body: Json = {"name": name, "scopes": list(scopes)}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        return ApiKey.from_json(await self.request("POST", "/api-keys", json=body))

    async def api_keys(self) -> list[ApiKey]:
        return [ApiKey.from_json(k) for k in await self.request("GET", "/api-keys")]

    async def delete_api_key(self, key_id: str) -> None:
        await self.request("DELETE", f"/api-keys/{key_id}")

    async def info(self) -> Info:
        return Info.from_json(await self.request("GET", "/info"))

    async def health(self) -> Json:
        out: Json = await self.request("GET", "/health")
        return out

    # -- trading -----------------------------------------------------------------------------------

    async def deposit(self, asset: str, amount: Number) -> Balance:
        return Balance.from_json(await self.request("POST", "/deposit",
                                                    json={"asset": asset, "amount": decimal_str(amount)}))

    async def balance(self) -> Balance:
        return Balance.from_json(await self.request("GET", "/balance"))

    async def place_order(self, token_id: str, symbol: str, side: str, quantity: Number,
                          price: Number | None = None, *, type: str = "limit") -> Order:
        body = _order_body(token_id, symbol, side, quantity, price, type)
        return Order.from_json(await self.request("POST", "/orders", json=body))

    async def get_order(self, token_id: str) -> Order:
        return Order.from_json(await self.request("GET", f"/orders/{token_id}"))

    async def list_orders(self, status: str | None = None, *, limit: int = 100, offset: int = 0) -> Page:
        out = await self.request("GET", "/orders", params={"status": status, "limit": limit, "offset": offset})
        return Page([Order.from_json(o) for o in out["orders"]], out["total"], out["limit"], out["offset"])

    async def cancel_order(self, token_id: str) -> Order:
        return Order.from_json(await self.request("DELETE", f"/orders/{token_id}"))

    async def modify_order(self, token_id: str, *, price: Number | None = None,
                           quantity: Number | None = None) -> Order:
        return Order.from_json(await self.request("PUT", f"/orders/{token_id}", json=_modify_body(price, quantity)))

    async def fills(self, *, limit: int = 100, offset: int = 0) -> Page:
        out = await self.request("GET", "/fills", params={"limit": limit, "offset": offset})
        return Page([Fill.from_json(f) for f in out["fills"]], out["total"], out["limit"], out["offset"])

    async def wait_order(self, token_id: str, *, timeout: float = 10.0,  # noqa: ASYNC109 - a deadline, not a cancel
                         poll_s: float = 0.05) -> Order:
        """Poll ``GET /orders/{token_id}`` until the order is filled, cancelled, expired or rejected."""
        deadline = time.monotonic() + timeout
        while True:
            order = await self.get_order(token_id)
            if order.is_final or time.monotonic() >= deadline:
                return order
            await asyncio.sleep(poll_s)

    # -- WebSocket ---------------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/ws"

    @contextlib.asynccontextmanager
    async def stream(self, *, max_pending: int = 10_000) -> AsyncIterator[Stream]:
        """One WebSocket connection, authenticated with the client's token when it has one."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        async with connect(self.ws_url, additional_headers=headers, open_timeout=self.timeout,
                           close_timeout=2, max_size=2**22) as conn:
            stream = Stream(conn, timeout=self.timeout, max_pending=max_pending)
            try:
                yield stream
            finally:
                await stream.close()


class _End:
    """The end of a subscription's pushes (unsubscribed, or the stream closed)."""


_END = _End()


class Subscription(Generic[T]):
    """An async iterator over one subscription's pushes. ``await ws.subscribe(...)`` subscribes at once
    (errors raise there); ``async for`` on a subscription not yet awaited subscribes on the first step."""

    def __init__(self, stream: Stream, request: Json, max_pending: int) -> None:
        self._stream = stream
        self.request = request
        self.topic: str | None = None
        self.ack: Json | None = None
        self.dropped = 0  # oldest pushes dropped because more than max_pending were waiting
        self._items: deque[T | BaseException | _End] = deque()
        self._max = max_pending
        self._wake = asyncio.Event()
        self._started: asyncio.Task[Json] | None = None
        self._ended = False

    def __await__(self) -> Generator[Any, None, Subscription[T]]:
        return self._start().__await__()

    async def _start(self) -> Subscription[T]:
        if self._started is None:
            self._started = asyncio.ensure_future(self._stream._subscribe(self))
        await self._started
        return self

    def _push(self, item: T | BaseException | _End) -> None:
        if item is not _END and not isinstance(item, BaseException) and len(self._items) >= self._max:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._wake.set()

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        await self._start()
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        item = self._items.popleft()
        if isinstance(item, _End):
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item

    async def next(self, timeout: float | None = None) -> T:  # noqa: ASYNC109 - convenience for scripts
        """The next push; ``TimeoutError`` after ``timeout`` seconds."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def unsubscribe(self) -> None:
        if self.topic is not None and not self._ended:
            topic, self.topic = self.topic, None
            self._stream._subs.pop(topic, None)
            self._items.clear()  # what was still waiting is dropped with the subscription
            self._push(_END)
            await self._stream.request("unsubscribe", subscription=topic)


class Stream:
    """One WebSocket connection: several subscriptions routed by ``topic``, requests matched by ``id``."""

    def __init__(self, conn: ClientConnection, *, timeout: float = 10.0, max_pending: int = 10_000) -> None:
        self.conn = conn
        self.timeout = timeout
        self.max_pending = max_pending
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Json], Subscription[Any] | None]] = {}
        self._subs: dict[str, Subscription[Any]] = {}
        self._closing = False
        self._error: StreamClosed | None = None
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        self._closing = True
        await self.conn.close()
        with contextlib.suppress(BaseException):
            await self._reader

    async def wait_closed(self) -> StreamClosed:
        """Wait until the connection ends; why it did (``code``, ``reason``: e.g. 4001 ``API key deleted``)."""
        with contextlib.suppress(BaseException):
            await asyncio.shield(self._reader)
        return self._error or StreamClosed(self.conn.close_code, self.conn.close_reason or "connection closed")

    # -- requests ----------------------------------------------------------------------------------

    async def request(self, action: str, **fields: Any) -> Json:
        """Send ``{"action": action, ...}`` and return the reply; an error reply raises ``ApiError``."""
        return await self._request({"action": action, **fields}, None)

    async def _request(self, msg: Json, sub: Subscription[Any] | None) -> Json:
        if self._error is not None:
            raise self._error
        rid = next(self._ids)
        fut: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, sub)
        try:
            await self.conn.send(dumps({**msg, "id": rid}))
            reply = await asyncio.wait_for(fut, self.timeout)
        except ConnectionClosed as e:
            raise self._closed(e) from None
        finally:
            self._pending.pop(rid, None)
        if reply.get("type") == "error":
            status = reply.get("status")
            raise ApiError(status if isinstance(status, int) else None, str(reply.get("code", "error")),
                           str(reply.get("message", reply.get("detail", ""))))
        return reply

    async def ping(self) -> Json:
        return await self.request("ping")

    async def auth(self, token: str) -> Json:
        return await self.request("auth", token=token)

    async def list(self) -> list[str]:
        return list((await self.request("list")).get("subscriptions", []))

    # -- subscriptions -----------------------------------------------------------------------------

    def subscribe(self, stream: str, symbol: str | None = None, *, exchange: str = "all",
                  interval: str | None = None, half_life: Number | None = None,
                  depth: int | None = None) -> Subscription[Any]:
        msg: Json = {"action": "subscribe", "stream": stream}
        if stream != "orders":
            msg.update(symbol=symbol, exchange=exchange)
        if interval is not None:
            msg["interval"] = interval
        if depth is not None:
            msg["depth"] = depth
        if half_life is not None:
            msg["half_life"] = _json_number(half_life)
        return Subscription(self, msg, self.max_pending)

    def best_touch(self, symbol: str, exchange: str = "all") -> Subscription[BestTouch]:
        return self.subscribe("best_touch", symbol, exchange=exchange)

    def trades(self, symbol: str, exchange: str = "all") -> Subscription[Trade]:
        return self.subscribe("trades", symbol, exchange=exchange)

    def klines(self, symbol: str, interval: str, exchange: str = "all") -> Subscription[Kline]:
        return self.subscribe("klines", symbol, exchange=exchange, interval=interval)

    def ewma(self, symbol: str, half_life: Number, exchange: str = "all") -> Subscription[Ewma]:
        return self.subscribe("ewma", symbol, exchange=exchange, half_life=half_life)

    def book(self, symbol: str, exchange: str = "all", depth: int = 10) -> Subscription[Book]:
        """The top ``depth`` levels (1-20) of both exchanges merged by price, each with its size per exchange
        (``exchange`` ``binance`` / ``okx``: that one's book); a snapshot first, then every change."""
        return self.subscribe("book", symbol, exchange=exchange, depth=depth)

    def orders(self) -> Subscription[OrderEvent | Resync]:
        """The user's order events (accepted, modified, cancelled, filled, expired, rejected), and a ``Resync``
        when the gateway may have missed some (re-read open orders and balance then)."""
        return self.subscribe("orders")

    async def _subscribe(self, sub: Subscription[Any]) -> Json:
        reply = await self._request(sub.request, sub)
        return reply

    # -- order actions over the WebSocket ----------------------------------------------------------

    async def place_order(self, token_id: str, symbol: str, side: str, quantity: Number,
                          price: Number | None = None, *, type: str = "limit") -> Order:
        return _order_of(await self.request("place_order", **_order_body(token_id, symbol, side, quantity,
                                                                         price, type)))

    async def cancel_order(self, token_id: str) -> Order:
        return _order_of(await self.request("cancel_order", token_id=token_id))

    async def modify_order(self, token_id: str, *, price: Number | None = None,
                           quantity: Number | None = None) -> Order:
        return _order_of(await self.request("modify_order", token_id=token_id, **_modify_body(price, quantity)))

    # -- reader ------------------------------------------------------------------------------------

    def _closed(self, _: ConnectionClosed | None = None) -> StreamClosed:
        if self._error is None:
            self._error = StreamClosed(self.conn.close_code, self.conn.close_reason or "connection closed")
        return self._error

    def _dispatch(self, msg: Json) -> None:
        rid = msg.get("id")
        if msg.get("type") in ("ack", "error", "auth", "pong") and isinstance(rid, int) and rid in self._pending:
            fut, sub = self._pending[rid]
            if sub is not None and msg.get("type") == "ack":
                # registered here, before the snapshot that follows the ack is read
                # the user's own streams (no symbol) may be acked without a topic: their pushes carry the stream name
                sub.topic = msg.get("subscription") or msg.get("topic") or (None if "symbol" in sub.request else sub.request.get("stream"))
                sub.ack = msg
                if sub.topic:
                    self._subs[sub.topic] = sub
            if not fut.done():
                fut.set_result(msg)
            return
        topic = msg.get("topic")
        sub = self._subs.get(topic) if isinstance(topic, str) else None
        if sub is None:
            return
        try:
            sub._push(parse_push(msg))
        except (KeyError, ValueError, TypeError) as e:
            sub._push(ValueError(f"cannot read {msg.get('type')} push: {e!r}"))

    async def _read(self) -> None:
        err: ConnectionClosed | None = None
        try:
            async for text in self.conn:
                try:
                    msg = loads(text)
                except ValueError:
                    continue  # not JSON: nothing to route it to
                if isinstance(msg, dict):
                    self._dispatch(msg)
        except ConnectionClosed as e:
            err = e
        finally:
            if self._closing and err is None:
                self._error = StreamClosed(1000, "closed by the client")
                for sub in self._subs.values():
                    sub._push(_END)
            else:
                exc = self._closed(err)
                for sub in self._subs.values():
                    sub._push(_END if self._closing else exc)
            for fut, _ in self._pending.values():
                if not fut.done():
                    fut.set_exception(self._error or StreamClosed(None, "connection closed"))
            self._subs.clear()


def _json_number(v: Number) -> int | float:
    """``half_life`` must be a JSON number (a float's shortest repr keeps the digits of a short decimal)."""
    d = Decimal(v) if not isinstance(v, Decimal) else v
    return int(d) if d == d.to_integral_value() else float(d)


def _order_of(reply: Json) -> Order:
    o = reply.get("order") or reply.get("data") or (reply if "token_id" in reply and "status" in reply else None)
    if isinstance(o, dict) and "order" in o and "token_id" not in o:
        o = o["order"]
    if not isinstance(o, dict):
        raise ApiError(None, "bad_reply", f"no order in the reply: {str(reply)[:200]}")
    return Order.from_json(o)
