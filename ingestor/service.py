"""One exchange's ingestor: connection supervisor -> pure parser -> batched Redis publisher, plus feed status.

Feed status: a ``FeedStatus`` goes out on ``status_channel(ex)`` at every state change and every
``HEARTBEAT_S``; the ``status_key(ex)`` hash carries the same state with counters for ``redis-cli`` users.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import redis.asyncio as aioredis

from ingestor import binance, okx
from ingestor.connection import ConnectionSupervisor, ConnState, Endpoint
from ingestor.parsing import Control, FrameError, ParseResult
from ingestor.publisher import Publisher, status_hash_fields
from ingestor.stats import FeedStats, RateLimitedLog, feed_state
from shared.feed_health import HEARTBEAT_S
from shared.schema import FeedState, FeedStatus
from shared.settings import Settings
from shared.timeutil import now_us

log = logging.getLogger("ingestor")
TICK_S = 0.1  # how often the feed state is re-evaluated


class Parser(Protocol):
    def parse(self, frame: str | bytes, ts_recv_us: int) -> ParseResult: ...


def exchange_parts(exchange: str, settings: Settings) -> tuple[Parser, Endpoint]:
    """The exchange-specific parts: parser, and the endpoint (URL, subscription frames, keepalive, lifetime)."""
    if exchange == "binance":
        return binance.BinanceParser(settings), Endpoint(
            url=binance.build_url(settings),
            max_lifetime_s=settings.binance.max_lifetime_s,
        )
    if exchange == "okx":
        return okx.OkxParser(settings), Endpoint(
            url=settings.okx.ws_url,
            subscribe=tuple(okx.subscribe_requests(settings)),
            subscribe_pace_s=okx.SUBSCRIBE_PACE_S,
            ping_after_s=settings.okx.ping_after_s,
            ping_payload=okx.PING,
        )
    raise ValueError(f"unknown exchange {exchange!r} (expected binance or okx)")


class Ingestor:
    def __init__(self, settings: Settings, exchange: str, redis: aioredis.Redis, *,
                 endpoint: Endpoint | None = None) -> None:
        """``endpoint`` replaces the exchange's own (tests)."""
        self.settings = settings
        self.exchange = exchange
        self.parser, own = exchange_parts(exchange, settings)
        self.publisher = Publisher(redis, exchange)
        self.stats = FeedStats()
        self.supervisor = ConnectionSupervisor(exchange, endpoint or own, on_frame=self.on_frame,
                                               feeds=settings.feeds, on_state=self._on_conn_state)
        self.stale_after_us = int(settings.feeds.stale_after_s * 1_000_000)
        self.state: FeedState = "down"
        self.reason = "starting"
        self.conn_state: ConnState = "disconnected"
        self.conn_reason = ""
        self._last_heartbeat = 0.0
        self._rlog = RateLimitedLog(log, 5.0)
        self._tasks: list[asyncio.Task[None]] = []

    # -- hot path --------------------------------------------------------------------------------
    def on_frame(self, frame: str | bytes, ts_recv_us: int) -> str | None:
        stats = self.stats
        stats.frames += 1
        stats.last_frame_us = ts_recv_us
        try:
            res = self.parser.parse(frame, ts_recv_us)
        except FrameError as e:
            stats.reject(e.reason)
            self._rlog.warning(e.reason, "%s: rejected frame (%s): %s", self.exchange, e, repr(frame[:200]),
                               fields={"event": "frame_rejected", "exchange": self.exchange, "reason": e.reason})
            return None
        if type(res) is list:
            if res:
                self.publisher.submit(res)
                counts = stats.messages
                for m in res:
                    counts[m.type] += 1
                stats.last_md_us = ts_recv_us
                if self.state != "up":
                    self.evaluate(ts_recv_us)
            return None
        assert isinstance(res, Control)
        return self._control(res)

    def _control(self, c: Control) -> str | None:
        if c.kind == "reconnect":
            log.warning("%s: exchange asks to reconnect: %s", self.exchange, c.detail, extra={"fields": {
                "event": "exchange_reconnect_request", "exchange": self.exchange, "detail": c.detail}})
            return c.detail
        if c.kind == "error":
            self.stats.errors += 1
            self._rlog.log(logging.ERROR, "exchange-error", "%s: exchange reported an error: %s", self.exchange,
                           c.detail)
        elif c.kind == "subscribed":
            log.info("%s: subscribed %s", self.exchange, c.detail)
        elif c.kind == "info":
            log.info("%s: %s", self.exchange, c.detail)
        return None

    # -- feed state --------------------------------------------------------------------------------
    def _on_conn_state(self, state: ConnState, reason: str) -> None:
        self.conn_state = state
        self.conn_reason = reason
        self.evaluate(now_us())

    def evaluate(self, now: int, heartbeat: bool = False) -> None:
        """Recompute the feed state; publish it if it changed (or as a heartbeat)."""
        state, reason = feed_state(self.conn_state == "connected", self.stats.last_md_us,
                                   self.supervisor.connected_since_us, now, self.stale_after_us)
        if state == "down" and self.conn_reason:
            reason = f"{self.conn_state}: {self.conn_reason}"
        changed = state != self.state
        self.state, self.reason = state, reason
        if changed:
            log.info("%s: feed is %s (%s)", self.exchange, state, reason, extra={"fields": {
                "event": "feed_state", "exchange": self.exchange, "state": state, "reason": reason}})
        if changed or heartbeat:
            self.publish_status(now)

    def status_fields(self, now: int) -> dict[str, str | int]:
        s = self.stats
        sup = self.supervisor
        fields = status_hash_fields(
            state=self.state, reason=self.reason, connection=self.conn_state, url=sup.url, updated_us=now,
            connected_since_us=sup.connected_since_us, last_msg_us=s.last_md_us, last_frame_us=s.last_frame_us,
            frames=s.frames, msgs_bbo=s.messages["bbo"], msgs_book=s.messages["book"],
            msgs_trade=s.messages["trade"], reconnects=sup.reconnects, pings_sent=sup.pings_sent,
            rejected=s.rejected_total, exchange_errors=s.errors, published=self.publisher.published,
            dropped=self.publisher.dropped, redis_errors=self.publisher.errors,
        )
        for reason, n in s.rejected.items():
            fields[f"rejected_{reason}"] = n
        return fields

    def publish_status(self, now: int) -> None:
        self.publisher.submit_status(FeedStatus(self.exchange, self.state, self.reason, now), self.status_fields(now))

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_S)
            beat = loop.time() - self._last_heartbeat >= HEARTBEAT_S
            if beat:
                self._last_heartbeat = loop.time()
            self.evaluate(now_us(), heartbeat=beat)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> None:
        self.publish_status(now_us())
        self._tasks = [asyncio.create_task(self.publisher.run()), asyncio.create_task(self._ticker())]
        try:
            await self.supervisor.run()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Announce ``down`` and flush, so consumers stop trusting our prices at once."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.conn_state, self.conn_reason = "stopped", "ingestor stopped"
        self.state, self.reason = "down", "ingestor stopped"
        self.publish_status(now_us())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publisher.flush(), 3.0)

    def stop(self) -> None:
        self.supervisor.stop()
