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

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shared.settings import FeedSettings
from shared.timeutil import now_us

log = logging.getLogger("ingestor.connection")

ConnState = Literal["connecting", "connected", "disconnected", "stopped"]
# Called with each raw frame and its receive time (µs); returns a reason to redial now, or None.
FrameHandler = Callable[[str | bytes, int], str | None]
StateHandler = Callable[[ConnState, str], None]

# Consecutive short-lived connections that may be redialled without waiting, when the server asked.
MAX_IMMEDIATE_REDIALS = 3


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
        self._ws: ClientConnection | None = None

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
                try:
                    ws = await connect(self.url, open_timeout=self.open_timeout_s, close_timeout=1.0,
                                       max_size=8 * 2**20)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - any dial failure means: back off and retry
                    reason = f"connect failed: {e!r}"[:300]
                    immediate = False
                    lived = 0.0
                else:
                    started = time.monotonic()
                    reason, immediate = await self._session(ws)
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

    async def _session(self, ws: ClientConnection) -> tuple[str, bool]:
        """Serve one connection until it ends; returns (why, whether to redial at once)."""
        self._ws = ws
        self.connects += 1
        self.connected_since_us = now_us()
        self.last_rx = time.monotonic()
        self._set_state("connected", self.url)
        reader = asyncio.create_task(self._read(ws))
        watchdog = asyncio.create_task(self._watchdog(ws))
        subscriber = asyncio.create_task(self._subscribe(ws)) if self.subscribe else None
        try:
            done, _ = await asyncio.wait({reader, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            task = reader if reader in done else watchdog
            try:
                return task.result()
            except ConnectionClosed as e:
                return f"connection closed: {e}", False
            except Exception as e:  # noqa: BLE001 - a broken handler or socket ends this session only
                log.exception("%s: session failed", self.name)
                return f"session failed: {e!r}"[:300], False
        finally:
            for t in (reader, watchdog, subscriber):
                if t is not None and not t.done():
                    t.cancel()
            await asyncio.gather(reader, watchdog, *([subscriber] if subscriber else []), return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
            self._ws = None
            self.connected_since_us = 0

    async def _read(self, ws: ClientConnection) -> tuple[str, bool]:
        on_frame = self.on_frame
        clock = time.monotonic
        async for frame in ws:
            self.last_rx = clock()
            reason = on_frame(frame, now_us())
            if reason is not None:
                return f"exchange asked: {reason}", True
        return f"closed by server (code {ws.close_code}, {ws.close_reason!r})", False

    async def _subscribe(self, ws: ClientConnection) -> None:
        for i, req in enumerate(self.subscribe):
            if i and self.subscribe_pace_s:
                await asyncio.sleep(self.subscribe_pace_s)
            await ws.send(req)

    async def _watchdog(self, ws: ClientConnection) -> tuple[str, bool]:
        opened = time.monotonic()
        limits = [self.idle_timeout_s, 1.0] + ([self.ping_after_s] if self.ping_after_s else [])
        tick = max(0.01, min(limits) / 5)
        pinged_at = 0.0
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
                await ws.send(self.ping_payload)
            if self.max_lifetime_s is not None and now - opened >= self.max_lifetime_s:
                return f"lifetime of {self.max_lifetime_s:.0f}s reached", True
