"""One WebSocket connection kept alive forever, whatever the exchange.

``ConnectionSupervisor.run()`` loops: dial -> send the subscription frames (paced) -> hand every frame to
``on_frame`` -> on any end, wait a backoff and dial again. Around the read loop a watchdog
- drops the connection when no frame at all arrived for ``idle_timeout_s`` (a dead TCP stream can stay
  silent for long before any close arrives),
- sends the keepalive text (OKX ``ping``) after ``ping_after_s`` of silence,
- redials before ``max_lifetime_s`` (Binance closes connections at 24 h),
- redials at once when ``request_reconnect()`` is called or ``on_frame`` returns a reason
  (Binance ``serverShutdown``, OKX notice 64008).

Backoff doubles from ``backoff_initial_s`` to ``backoff_max_s`` with jitter and resets once a connection
lived ``stable_after_s``. Every state change goes to the log and to ``on_state``. Several supervisors of one
exchange share a ``Pacer`` (``connect_gate``) so that their dials, first ones and redials alike, stay under
the exchange's connection rate (OKX: 3 per second per IP).

The client is picows (WebSocket frames parsed in C, pings answered by it): picows calls ``_Session.on_ws_frame``
from the socket's read, and every whole message, of every connection, goes through ``ConnectionSupervisor._arrive``
with its receive time: the one place where raw frames arrive (no future, no task wake-up per frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from shared.settings import FeedSettings
from shared.timeutil import now_us

log = logging.getLogger("ingestor.connection")

ConnState = Literal["connecting", "connected", "disconnected", "stopped"]
# Called with each raw frame and its receive time (µs); returns a reason to redial now, or None.
FrameHandler = Callable[[str | bytes, int], str | None]
StateHandler = Callable[[ConnState, str], None]

# Consecutive short-lived connections that may be redialled without waiting, when the server asked.
MAX_IMMEDIATE_REDIALS = 3
MAX_MESSAGE_BYTES = 8 * 2**20
_TEXT, _BINARY, _CONT, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.CLOSE


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What differs between exchanges: where to dial, what to send once connected, how to keep the link alive."""

    url: str
    subscribe: tuple[str, ...] = ()  # text frames sent after every connect, ``subscribe_pace_s`` apart
    subscribe_pace_s: float = 0.0
    ping_after_s: float | None = None  # send ``ping_payload`` after this long without a frame
    ping_payload: str = "ping"
    max_lifetime_s: float | None = None  # redial before the server's own connection lifetime runs out


class Backoff:
    """Exponential backoff with "equal jitter": a delay in [d/2, d], d doubling up to ``max_s``."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        d = min(self.max_s, self.initial_s * (1 << min(self.attempt, 30)))
        self.attempt += 1
        return d / 2 + self._rng.uniform(0, d / 2)

    def reset(self) -> None:
        self.attempt = 0


class Pacer:
    """Spaces events at least ``interval_s`` apart across every caller of ``wait()`` (first come, first served)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next = 0.0
        self.waits = 0  # how many callers had to wait (tests, logs)

    def reserve(self) -> float:
        """Book the next slot; return how long the caller must wait for it."""
        now = self._clock()
        at = max(now, self._next)
        self._next = at + self.interval_s
        return at - now

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            self.waits += 1
            await asyncio.sleep(delay)


class ConnectionSupervisor:
    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        on_frame: FrameHandler,
        feeds: FeedSettings,
        *,
        on_state: StateHandler | None = None,
        rng: random.Random | None = None,
        open_timeout_s: float = 10.0,
        connect_gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``connect_gate``: awaited before every dial (a shared ``Pacer.wait``)."""
        self.name = name
        self.endpoint = endpoint
        self.url = endpoint.url
        self.on_frame = on_frame
        self.feeds = feeds
        self.subscribe = endpoint.subscribe
        self.subscribe_pace_s = endpoint.subscribe_pace_s
        self.ping_after_s = ping_after_s = endpoint.ping_after_s
        self.ping_payload = endpoint.ping_payload
        self.max_lifetime_s = endpoint.max_lifetime_s
        self.on_state = on_state
        self.open_timeout_s = open_timeout_s
        self.connect_gate = connect_gate
        self.backoff = Backoff(feeds.backoff_initial_s, feeds.backoff_max_s, rng)
        # With a keepalive, silence is normal until the ping; the pong then has idle_timeout_s to come.
        self.idle_timeout_s = feeds.idle_timeout_s
        if ping_after_s is not None:
            self.idle_timeout_s = max(feeds.idle_timeout_s, ping_after_s + min(feeds.idle_timeout_s, 5.0))
        self.state: ConnState = "disconnected"
        self.connects = 0
        self.reconnects = 0
        self.pings_sent = 0
        self.connected_since_us = 0
        self.last_rx = 0.0  # monotonic time of the last frame
        self.last_delay_s = 0.0
        self._kick = asyncio.Event()
        self._kick_reason = ""
        self._stopping = False
        self._ws: WSTransport | None = None

    # -- control from outside -------------------------------------------------------------------
    def request_reconnect(self, reason: str) -> None:
        self._kick_reason = reason
        self._kick.set()

    def stop(self) -> None:
        self._stopping = True
        self.request_reconnect("stopping")

    # -- the loop --------------------------------------------------------------------------------
    def _set_state(self, state: ConnState, reason: str) -> None:
        if state != self.state:
            log.info("%s: %s -> %s (%s)", self.name, self.state, state, reason, extra={"fields": {
                "event": "exchange_connection", "exchange": self.name, "from": self.state, "to": state,
                "reason": reason, "reconnects": self.reconnects}})
        self.state = state
        if self.on_state is not None:
            self.on_state(state, reason)

    async def run(self) -> None:
        immediate_streak = 0
        try:
            while not self._stopping:
                self._kick.clear()
                self._set_state("connecting", self.url)
                if self.connect_gate is not None:
                    await self._gate(self.connect_gate)
                    if self._stopping:
                        break
                session = _Session(self)
                try:
                    ws, _ = await asyncio.wait_for(
                        ws_connect(session.itself, self.url, websocket_handshake_timeout=self.open_timeout_s,
                                   max_frame_size=MAX_MESSAGE_BYTES, enable_auto_pong=True, use_aiofastnet=False,
                                   logger_name=f"ingestor.{self.name}"),
                        self.open_timeout_s)
                except BaseException as e:
                    # A handshake may have completed just as the timeout fired: that connection is dropped.
                    session.end("connect failed", False)
                    self._ws, self.connected_since_us = None, 0
                    if not isinstance(e, Exception):
                        raise
                    reason = f"connect failed: {e!r}"[:300]
                    immediate = False
                    lived = 0.0
                else:
                    started = time.monotonic()
                    reason, immediate = await self._session(ws, session)
                    lived = time.monotonic() - started
                if self._stopping:
                    break
                if lived >= self.feeds.stable_after_s:
                    self.backoff.reset()
                    immediate_streak = 0
                if immediate and immediate_streak < MAX_IMMEDIATE_REDIALS:
                    immediate_streak += 1
                    delay = 0.0
                else:
                    delay = self.backoff.next_delay()
                self.last_delay_s = delay
                self._set_state("disconnected", f"{reason}; redial in {delay:.2f}s")
                if delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wait_stop(), delay)
                self.reconnects += 1
        finally:
            self._set_state("stopped", "supervisor stopped")

    async def _gate(self, gate: Callable[[], Awaitable[None]]) -> None:
        """Wait for our turn to dial, or for stop()."""
        turn = asyncio.ensure_future(gate())
        stop = asyncio.ensure_future(self._wait_stop())
        try:
            await asyncio.wait({turn, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (turn, stop):
                t.cancel()
            await asyncio.gather(turn, stop, return_exceptions=True)

    async def _wait_stop(self) -> None:
        while not self._stopping:
            self._kick.clear()
            await self._kick.wait()

    async def _session(self, ws: WSTransport, session: _Session) -> tuple[str, bool]:
        """Serve one connection until it ends; returns (why, whether to redial at once)."""
        watchdog = asyncio.create_task(self._watchdog(ws))
        subscriber = asyncio.create_task(self._subscribe(ws)) if self.subscribe else None
        try:
            done, _ = await asyncio.wait({session.ended, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            if session.ended in done:
                return session.ended.result()
            try:
                return watchdog.result()
            except Exception as e:  # noqa: BLE001 - a broken socket ends this session only
                log.exception("%s: session failed", self.name)
                return f"session failed: {e!r}"[:300], False
        finally:
            for t in (watchdog, subscriber):
                if t is not None and not t.done():
                    t.cancel()
            await asyncio.gather(watchdog, *([subscriber] if subscriber else []), return_exceptions=True)
            if not ws.is_disconnected:
                with contextlib.suppress(Exception):
                    ws.send_close(WSCloseCode.OK)
                    ws.disconnect()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.wait_disconnected(), 2.0)
            self._ws = None
            self.connected_since_us = 0

    def _opened(self, ws: WSTransport) -> None:
        # Called by picows once the handshake is done, before any frame (the first may be in the same read).
        self._ws = ws
        self.connects += 1
        self.connected_since_us = now_us()
        self.last_rx = time.monotonic()
        self._set_state("connected", self.url)

    def _arrive(self, raw: str | bytes, session: _Session) -> None:
        """Every whole message of every connection arrives here (text as str, binary as bytes): the one place
        where raw frames arrive, and where their receive time is taken."""
        self.last_rx = time.monotonic()
        recv_us = now_us()
        try:
            reason = self.on_frame(raw, recv_us)
        except Exception as e:  # noqa: BLE001 - a broken handler ends this session only
            log.exception("%s: session failed", self.name)
            session.end(f"session failed: {e!r}"[:300], False)
            return
        if reason is not None:
            session.end(f"exchange asked: {reason}", True)

    async def _subscribe(self, ws: WSTransport) -> None:
        for i, req in enumerate(self.subscribe):
            if i and self.subscribe_pace_s:
                await asyncio.sleep(self.subscribe_pace_s)
            ws.send(_TEXT, req.encode())

    async def _watchdog(self, ws: WSTransport) -> tuple[str, bool]:
        opened = time.monotonic()
        limits = [self.idle_timeout_s, 1.0] + ([self.ping_after_s] if self.ping_after_s else [])
        tick = max(0.01, min(limits) / 5)
        pinged_at = 0.0
        ping = self.ping_payload.encode()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), tick)
            if self._kick.is_set():
                return self._kick_reason, True
            now = time.monotonic()
            silent = now - self.last_rx
            if silent >= self.idle_timeout_s:
                return f"idle: no frame for {silent:.1f}s", False
            if self.ping_after_s is not None and silent >= self.ping_after_s and pinged_at <= self.last_rx:
                pinged_at = now
                self.pings_sent += 1
                ws.send(_TEXT, ping)
            if self.max_lifetime_s is not None and now - opened >= self.max_lifetime_s:
                return f"lifetime of {self.max_lifetime_s:.0f}s reached", True


class _Session(WSListener):
    """picows' callbacks for one connection. picows answers pings itself; fragmented messages are put together
    here; each whole message goes to ``ConnectionSupervisor._arrive``, called right from the socket's read."""

    def __init__(self, sup: ConnectionSupervisor) -> None:
        super().__init__()
        self.sup = sup
        self.ended: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self._parts: list[bytes] = []
        self._size = 0
        self._text = False
        self._transport: WSTransport | None = None

    def itself(self) -> _Session:
        return self

    def end(self, reason: str, immediate: bool) -> None:
        if not self.ended.done():
            self.ended.set_result((reason, immediate))
        if self._transport is not None and not self._transport.is_disconnected:
            self._transport.disconnect()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self.sup._opened(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = frame.msg_type
        if frame.fin and not self._parts:
            if t is _TEXT:
                try:
                    self.sup._arrive(frame.get_payload_as_utf8_text(), self)
                except UnicodeDecodeError:
                    self._refuse(WSCloseCode.INVALID_TEXT, "invalid UTF-8 in a text frame")
                return
            if t is _BINARY:
                self.sup._arrive(frame.get_payload_as_bytes(), self)
                return
        if t is _CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        if t is _TEXT or t is _BINARY or t is _CONT:
            self._fragment(t, frame)
        # PONG (we send no WebSocket pings) and anything else: ignored.

    def _fragment(self, t: WSMsgType, frame: WSFrame) -> None:
        if (t is _CONT) != bool(self._parts):
            self._refuse(WSCloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
            return
        if t is not _CONT:
            self._text = t is _TEXT
        self._size += frame.payload_size
        if self._size > MAX_MESSAGE_BYTES:
            self._refuse(WSCloseCode.MESSAGE_TOO_BIG, f"message over {MAX_MESSAGE_BYTES} bytes")
            return
        self._parts.append(frame.get_payload_as_bytes())
        if frame.fin:
            raw, self._parts, self._size = b"".join(self._parts), [], 0
            if not self._text:
                self.sup._arrive(raw, self)
                return
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                self._refuse(WSCloseCode.INVALID_TEXT, "invalid UTF-8 in a text message")
                return
            self.sup._arrive(text, self)

    def _refuse(self, code: WSCloseCode, why: str) -> None:
        if self._transport is not None:
            self._transport.send_close(code, why.encode())
        self.end(f"protocol error: {why}", False)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        hs = transport.close_handshake
        if hs is not None and hs.recv is not None:
            self.end(f"closed by server (code {hs.recv.code.value}, {hs.recv.reason or ''!r})", False)
        else:
            self.end("connection closed: no close frame received or sent", False)
