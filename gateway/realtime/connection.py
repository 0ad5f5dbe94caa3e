"""The client WebSocket ``/ws``: authentication, one reply per client message, a writer per connection.

Actions are a table (``ACTIONS``); adding one is ``@action("name")`` on an ``async def (conn, msg)``
that replies with ``conn.ack(...)`` or raises ``DomainError`` (answered ``{"type": "error", "code",
"message"}``). Streams other than market data are entries of ``STREAM_HANDLERS``
(``gateway.realtime.order_actions`` registers the user's ``orders`` and the order actions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from gateway import jsonio, metrics
from gateway.realtime.protocol import MARKET_STREAMS, Spec, Subscription, parse_spec, parse_topic
from gateway.realtime.queue import CLOSE_CRITICAL_OVERFLOW, CLOSE_SLOW, ClientQueue
from gateway.realtime.server import frame_sink
from gateway.services.credentials import Credentials
from gateway.services.principals import Principal
from shared.errors import DomainError
from shared.settings import Settings
from shared.timeutil import now_us

log = logging.getLogger(__name__)
router = APIRouter()

CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_REVOKED = 4001  # the token was logged out or outdated by a password change, or the API key deleted


class StreamSource(Protocol):
    async def subscribe(self, spec: Spec, queue: ClientQueue, ack: str) -> Subscription: ...


Handler = Callable[["Connection", dict[str, Any]], Awaitable[None]]
ACTIONS: dict[str, Handler] = {}
PUBLIC_ACTIONS: set[str] = set()  # allowed before authentication
# stream name -> the source that serves it (market data by default; the orders stream can be registered)
STREAM_HANDLERS: dict[str, Callable[[Connection], StreamSource]] = {}


def action(name: str, *, public: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ACTIONS[name] = fn
        if public:
            PUBLIC_ACTIONS.add(name)
        return fn
    return register


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _bearer(ws: WebSocket) -> str | None:
    token = ws.query_params.get("token")
    if token:
        return token
    auth = ws.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class Connection:
    def __init__(self, ws: WebSocket, market: StreamSource, settings: Settings, credentials: Credentials) -> None:
        self.ws = ws
        self.market = market
        self.settings = settings
        self.credentials = credentials
        self.principal: Principal | None = None
        self._expiry: asyncio.TimerHandle | None = None
        cfg = settings.ws
        self.queue = ClientQueue(cfg.queue_max, cfg.queue_hard_max)
        self.user_id: str | None = None
        self.subs: dict[str, Subscription] = {}
        self._allowance = 2 * cfg.rate_per_s
        self._last_refill = time.monotonic()

    # -- replies -----------------------------------------------------------------------------------

    def send_json(self, o: dict[str, Any]) -> None:
        self.queue.put_critical(orjson.dumps(o).decode())

    def reply(self, type_: str, msg: dict[str, Any] | None, **fields: Any) -> None:
        self.send_json(self.reply_obj(type_, msg, **fields))

    @staticmethod
    def reply_obj(type_: str, msg: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type_}
        if msg is not None and "id" in msg:
            out["id"] = msg["id"]
        out.update(fields)
        return out

    def ack(self, msg: dict[str, Any], **fields: Any) -> None:
        self.reply("ack", msg, action=msg["action"], **fields)

    def error(self, code: str, message: str, msg: dict[str, Any] | None = None) -> None:
        self.reply("error", msg, code=code, message=message)

    # -- credentials -------------------------------------------------------------------------------

    async def authenticate(self, token: object) -> Principal:
        """The token's or API key's principal, watched from now on (``revoked`` closes the connection)."""
        p = await self.credentials.authenticate(token)
        if self.principal is not None and p.user_id != self.principal.user_id:
            raise DomainError("auth_failed", "this connection is already authenticated as another user")
        self.credentials.unwatch(self)
        self.principal, self.user_id = p, p.user_id
        self.credentials.watch(self)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if p.kind == "key" and p.exp:  # a key given an expiry stops working then, open connections included
            self._expiry = asyncio.get_running_loop().call_later(max(0.0, p.exp - time.time()), self.revoked,
                                                                 "API key expired")
        return p

    def revoked(self, reason: str) -> None:
        if self.queue.failed is None:
            metrics.WS_REVOKED_CLOSES.inc()
        self.queue.close(CLOSE_REVOKED, reason)

    def require(self, scope: str) -> None:
        if self.principal is None or not self.principal.can(scope):
            raise DomainError("insufficient_scope", f"this API key may not do this: it needs the scope {scope!r}")

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        metrics.WS_CONNECTIONS.inc()
        try:
            await self._run()
        finally:
            self.credentials.unwatch(self)
            if self._expiry is not None:
                self._expiry.cancel()
            metrics.WS_CONNECTIONS.dec()
            if self.queue.failed is not None and self.queue.failed[0] in (CLOSE_SLOW, CLOSE_CRITICAL_OVERFLOW):
                metrics.WS_SLOW_CLOSES.labels(str(self.queue.failed[0])).inc()
            if self.queue.dropped:
                metrics.WS_DROPPED.inc(self.queue.dropped)

    async def _run(self) -> None:
        sink = frame_sink(self.ws.scope)
        if sink is not None:  # frames go straight to the socket; the writer task only waits
            self.queue.attach(sink)
        writer = asyncio.create_task(self._writer())
        reader = asyncio.create_task(self._reader())
        failed = asyncio.create_task(self.queue.failed_event.wait())
        try:
            done, _ = await asyncio.wait({reader, writer, failed}, return_when=asyncio.FIRST_COMPLETED)
            close: _Close | None = None
            if self.queue.failed:
                close = _Close(*self.queue.failed)
            elif reader in done and reader.exception() is not None:
                # A bug, not the client's doing: say so in the log and close properly (1011), never a
                # silent TCP reset.
                log.error("websocket reader failed", exc_info=reader.exception())
                close = _Close(CLOSE_INTERNAL, "internal error")
            elif reader in done:
                close = reader.result()
                if close is not None:  # let the reply that explains the close go out first
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._drained(), 2.0)
            if close is not None:
                writer.cancel()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(close.code, close.reason), 2.0)
        finally:
            for t in (reader, writer, failed):
                t.cancel()
            for t in (reader, writer, failed):
                with contextlib.suppress(BaseException):
                    await t
            for topic, sub in list(self.subs.items()):
                metrics.WS_SUBSCRIPTIONS.labels(topic.split(":", 1)[0]).dec()
                with contextlib.suppress(Exception):
                    await sub.close()
            self.subs.clear()

    async def _drained(self) -> None:
        while not self.queue.idle:  # noqa: ASYNC110 - bounded by the caller, only before a close
            await asyncio.sleep(0.01)

    async def _writer(self) -> None:
        await self.queue.pump(self.ws.send_text)

    async def _reader(self) -> _Close | None:
        """Returns why to close the connection, or None once the client has gone."""
        cfg = self.settings.ws
        token = _bearer(self.ws)
        if token is not None:
            try:
                await self.authenticate(token)
            except DomainError as e:
                return _Close(CLOSE_POLICY, f"authentication failed: {e.message}")
            except (RedisError, OSError) as e:
                log.warning("websocket authentication: redis unavailable: %r", e)
                return _Close(CLOSE_TRY_AGAIN, "authentication unavailable: retry in a moment")
        deadline = time.monotonic() + cfg.auth_timeout_s
        while True:
            try:
                if self.user_id is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    message = await asyncio.wait_for(self.ws.receive(), left)
                else:
                    message = await self.ws.receive()
            except TimeoutError:
                return _Close(CLOSE_POLICY, "authentication required: send {\"action\": \"auth\", \"token\": ...}")
            except WebSocketDisconnect:
                return None
            if message["type"] == "websocket.disconnect":
                return None
            try:
                await self._handle(message)
            except _Close as c:
                return c

    def _rate_ok(self) -> bool:
        rate = self.settings.ws.rate_per_s
        now = time.monotonic()
        self._allowance = min(2 * rate, self._allowance + (now - self._last_refill) * rate)
        self._last_refill = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

    async def _handle(self, message: Mapping[str, Any]) -> None:
        if not self._rate_ok():
            raise _Close(CLOSE_POLICY, "too many messages")
        text = message.get("text")
        if text is None:
            self.error("binary_not_supported", "send JSON as text frames")
            return
        if len(text) > self.settings.ws.max_message_bytes:
            raise _Close(CLOSE_TOO_BIG, f"message larger than {self.settings.ws.max_message_bytes} bytes")
        try:
            msg = jsonio.loads(text)  # exact decimals for the order actions
        except jsonio.BadJson as e:
            self.error("bad_json", f"message is not valid JSON: {e}")
            return
        if not isinstance(msg, dict):
            self.error("bad_message", "message must be a JSON object")
            return
        if "id" in msg and not (msg["id"] is None or isinstance(msg["id"], int | str) and len(str(msg["id"])) <= 128):
            msg.pop("id")
            self.error("bad_id", "id must be a string or an integer of at most 128 characters", msg)
            return
        name = msg.get("action")
        handler = ACTIONS.get(name) if isinstance(name, str) else None
        if handler is None:
            shown = repr(name)[:40] if name is not None else "missing"
            self.error("unknown_action", f"unknown action {shown}; one of {', '.join(sorted(ACTIONS))}", msg)
            return
        if self.user_id is None and name not in PUBLIC_ACTIONS:
            self.error("not_authenticated", "authenticate first: {\"action\": \"auth\", \"token\": \"<jwt>\"}", msg)
            return
        try:
            await handler(self, msg)
        except DomainError as e:
            self.error(e.code, e.message, msg)
        except (RedisError, OSError) as e:  # as REST's 503: the connection stays, the client may retry
            log.warning("websocket %s: redis unavailable: %r", name, e)
            self.error("unavailable", "Redis is unreachable; retry in a moment", msg)


def _market(conn: Connection) -> StreamSource:
    return conn.market


STREAM_HANDLERS.update({s: _market for s in MARKET_STREAMS})


# -- actions ---------------------------------------------------------------------------------------


@action("auth", public=True)
async def _auth(conn: Connection, msg: dict[str, Any]) -> None:
    try:
        p = await conn.authenticate(msg.get("token"))
    except DomainError as e:
        if conn.user_id is None:
            conn.error("auth_failed", e.message, msg)
            raise _Close(CLOSE_POLICY, f"authentication failed: {e.message}") from None
        raise DomainError("auth_failed", e.message) from None
    conn.reply("auth", msg, status="ok", user_id=p.user_id)


@action("ping", public=True)
async def _ping(conn: Connection, msg: dict[str, Any]) -> None:
    conn.reply("pong", msg, ts_us=now_us())


def _spec_of(conn: Connection, msg: dict[str, Any]) -> Spec:
    """What to unsubscribe: the ack's ``subscription`` (or ``topic``, as data names it), or the stream fields."""
    for key in ("subscription", "topic"):
        if key in msg and "stream" not in msg:
            return parse_topic(msg[key], conn.settings)
    return parse_spec(msg, conn.settings, tuple(STREAM_HANDLERS))


@action("subscribe")
async def _subscribe(conn: Connection, msg: dict[str, Any]) -> None:
    spec = parse_spec(msg, conn.settings, tuple(STREAM_HANDLERS))
    topic = spec.topic
    if topic in conn.subs:
        raise DomainError("already_subscribed", f"already subscribed to {topic}")
    if len(conn.subs) >= conn.settings.ws.max_subscriptions:
        raise DomainError("too_many_subscriptions",
                      f"at most {conn.settings.ws.max_subscriptions} subscriptions per connection")
    source = STREAM_HANDLERS[spec.stream](conn)
    ack = orjson.dumps(conn.reply_obj("ack", msg, action="subscribe", **spec.describe())).decode()
    conn.subs[topic] = await source.subscribe(spec, conn.queue, ack)
    metrics.WS_SUBSCRIPTIONS.labels(spec.stream).inc()


@action("unsubscribe")
async def _unsubscribe(conn: Connection, msg: dict[str, Any]) -> None:
    spec = _spec_of(conn, msg)
    sub = conn.subs.pop(spec.topic, None)
    if sub is None:
        raise DomainError("not_subscribed", f"not subscribed to {spec.topic}")
    metrics.WS_SUBSCRIPTIONS.labels(spec.stream).dec()
    await sub.close()
    conn.ack(msg, subscription=spec.topic)


@action("list")
async def _list(conn: Connection, msg: dict[str, Any]) -> None:
    conn.ack(msg, subscriptions=sorted(conn.subs))


@router.websocket("/ws")
async def websocket_endpoint(ws: WebSocket) -> None:
    state = ws.app.state
    await Connection(ws, state.market, state.settings, state.credentials).run()
