"""One exchange's ingestor: connection supervisors -> pure parser -> batched Redis publisher, plus feed status.

The pairs this process serves (all, or a shard: ``planning.select_pairs``) are spread over one or more
exchange connections (``binance.plan_connections`` / ``okx.plan_connections``), each kept alive by its own
``ConnectionSupervisor``; all feed the same parser and publisher. Their dials are spaced by one ``Pacer``.

Feed status: a ``FeedStatus`` goes out on ``status_channel(ex)`` at every state change and every
``HEARTBEAT_S``; the status hash (``status_key(ex)``, or ``md:feed:<ex>:<shard>`` for a shard) carries the same
state with counters for ``redis-cli`` users. With several connections the feed is as good as its worst
connection: ``up`` only when every connection is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ingestor import binance, okx
from ingestor.connection import ConnectionSupervisor, ConnState, Endpoint, FrameHandler, Pacer
from ingestor.parsing import Control, FrameError, ParseResult
from ingestor.planning import ConnectionPlan, feed_status_key
from ingestor.publisher import Publisher, status_hash_fields
from ingestor.stats import FeedStats, RateLimitedLog, feed_state
from recorder.writer import NullRecorder, Recorder
from shared.feed_health import HEARTBEAT_S
from shared.redis_conn import Client
from shared.schema import FeedState, FeedStatus
from shared.settings import Pair, Settings
from shared.timeutil import now_us

log = logging.getLogger("ingestor")
TICK_S = 0.1  # how often the feed state is re-evaluated
_SEVERITY: dict[FeedState, int] = {"up": 0, "stale": 1, "down": 2}


class Parser(Protocol):
    def parse(self, frame: str | bytes, ts_recv_us: int) -> ParseResult: ...


def make_parser(exchange: str, settings: Settings) -> Parser:
    if exchange == "binance":
        return binance.BinanceParser(settings)
    if exchange == "okx":
        return okx.OkxParser(settings)
    raise ValueError(f"unknown exchange {exchange!r} (expected binance or okx)")


def plan_connections(exchange: str, settings: Settings, pairs: Sequence[Pair]) -> list[ConnectionPlan]:
    if exchange == "binance":
        return binance.plan_connections(settings, pairs)
    if exchange == "okx":
        return okx.plan_connections(settings, pairs)
    raise ValueError(f"unknown exchange {exchange!r} (expected binance or okx)")


def endpoint_for(exchange: str, settings: Settings, plan: ConnectionPlan) -> Endpoint:
    """A planned connection as the supervisor's ``Endpoint`` (URL, subscription frames, keepalive, lifetime)."""
    if exchange == "binance":
        return Endpoint(url=plan.url, subscribe=plan.subscribe, subscribe_pace_s=plan.subscribe_pace_s,
                        max_lifetime_s=settings.binance.max_lifetime_s)
    return Endpoint(url=plan.url, subscribe=plan.subscribe, subscribe_pace_s=plan.subscribe_pace_s,
                    ping_after_s=settings.okx.ping_after_s, ping_payload=okx.PING)


def connect_interval_s(exchange: str) -> float:
    return binance.CONNECT_INTERVAL_S if exchange == "binance" else okx.CONNECT_INTERVAL_S


def exchange_parts(exchange: str, settings: Settings) -> tuple[Parser, Endpoint]:
    """The parser and the single connection's endpoint for every configured pair (when they fit in one)."""
    plans = plan_connections(exchange, settings, settings.pairs)
    if len(plans) != 1:
        raise ValueError(f"{len(settings.pairs)} pairs need {len(plans)} {exchange} connections")
    return make_parser(exchange, settings), endpoint_for(exchange, settings, plans[0])


@dataclass(eq=False)
class Link:
    """One exchange connection of this ingestor and its own view of the feed."""

    index: int
    supervisor: ConnectionSupervisor
    plan: ConnectionPlan | None
    state: ConnState = "disconnected"
    reason: str = ""
    last_md_us: int = 0  # receive time of the last market data on this link
    feed: FeedState = "down"
    feed_reason: str = "starting"


class Ingestor:
    def __init__(self, settings: Settings, exchange: str, redis: Client, *,
                 endpoint: Endpoint | None = None, pairs: Sequence[Pair] | None = None,
                 status_suffix: str = "", recorder: Recorder | NullRecorder | None = None) -> None:
        """``endpoint`` replaces the exchange's own planned connections with this one (tests); ``pairs`` (default:
        every configured pair) are the pairs this process serves; ``status_suffix`` names its shard; ``recorder``
        keeps every raw frame received (``recording.enabled``)."""
        self.settings = settings
        self.recorder = recorder or NullRecorder()
        self.exchange = exchange
        self.pairs = tuple(settings.pairs if pairs is None else pairs)
        self.status_suffix = status_suffix
        self.parser = make_parser(exchange, settings)
        self.publisher = Publisher(redis, exchange, keyspace=settings.redis.keyspace,
                                   status_key=feed_status_key(exchange, status_suffix),
                                   linger_s=settings.ingestor.publish_linger_ms / 1000)
        self.stats = FeedStats()
        if endpoint is not None:
            planned: list[tuple[ConnectionPlan | None, Endpoint]] = [(None, endpoint)]
        else:
            planned = [(p, endpoint_for(exchange, settings, p))
                       for p in plan_connections(exchange, settings, self.pairs)]
        if not planned:
            raise ValueError(f"{exchange}: no pairs to serve")
        self.gate = Pacer(connect_interval_s(exchange))
        self.links: list[Link] = []
        for i, (plan, ep) in enumerate(planned):
            name = exchange if len(planned) == 1 else f"{exchange}#{i + 1}"
            sup = ConnectionSupervisor(name, ep, on_frame=self.on_frame, feeds=settings.feeds,
                                       connect_gate=self.gate.wait)
            link = Link(i, sup, plan)
            # One link is ``_current`` from the start: its frames skip the wrapper.
            sup.on_frame = self.on_frame if len(planned) == 1 else self._frame_handler(link)
            sup.on_state = self._state_handler(link)
            self.links.append(link)
        self._current = self.links[0]  # the link whose frame is being handled
        self.stale_after_us = int(settings.feeds.stale_after_s * 1_000_000)
        self.state: FeedState = "down"
        self.reason = "starting"
        self.conn_state: ConnState = "disconnected"
        self.conn_reason = ""
        self.subscribed = 0  # subscription acks received (OKX)
        self._last_heartbeat = 0.0
        self._rlog = RateLimitedLog(log, 5.0)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def supervisor(self) -> ConnectionSupervisor:
        """The first connection's supervisor (the only one with few pairs)."""
        return self.links[0].supervisor

    @property
    def supervisors(self) -> list[ConnectionSupervisor]:
        return [link.supervisor for link in self.links]

    def _frame_handler(self, link: Link) -> FrameHandler:
        on_frame = self.on_frame

        def handle(frame: str | bytes, ts_recv_us: int) -> str | None:
            self._current = link
            return on_frame(frame, ts_recv_us)
        return handle

    def _state_handler(self, link: Link) -> Callable[[ConnState, str], None]:
        def handle(state: ConnState, reason: str) -> None:
            self._on_conn_state(link, state, reason)
        return handle

    # -- hot path --------------------------------------------------------------------------------
    def on_frame(self, frame: str | bytes, ts_recv_us: int) -> str | None:
        self.recorder.record(frame, ts_recv_us)
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
                link = self._current
                link.last_md_us = ts_recv_us
                # Not up: this frame may make it so (at once, not at the next tick). A link that is already up
                # cannot, so frames never pay for the state machine while another link is down.
                if self.state != "up" and link.feed != "up":
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
            self.subscribed += 1  # hundreds at each connect with many pairs: one line per 5 s
            self._rlog.log(logging.INFO, "subscribed", "%s: subscribed %s (%d acks so far)", self.exchange, c.detail,
                           self.subscribed)
        elif c.kind == "info":
            log.info("%s: %s", self.exchange, c.detail)
        return None

    # -- feed state --------------------------------------------------------------------------------
    def _on_conn_state(self, link: Link, state: ConnState, reason: str) -> None:
        link.state = state
        link.reason = reason
        self.evaluate(now_us())

    def _evaluate_link(self, link: Link, now: int) -> None:
        state, reason = feed_state(link.state == "connected", link.last_md_us, link.supervisor.connected_since_us,
                                   now, self.stale_after_us)
        if state == "down" and link.reason:
            reason = f"{link.state}: {link.reason}"
        link.feed, link.feed_reason = state, reason

    def evaluate(self, now: int, heartbeat: bool = False) -> None:
        """Recompute the feed state (the worst link's); publish it if it changed (or as a heartbeat)."""
        links = self.links
        for link in links:
            self._evaluate_link(link, now)
        worst = max(links, key=lambda lk: _SEVERITY[lk.feed])  # the first of the worst
        state, reason = worst.feed, worst.feed_reason
        if len(links) > 1 and state != "up":
            bad = sum(1 for lk in links if lk.feed != "up")
            reason = f"connection {worst.index + 1}/{len(links)}: {reason}" + (
                f" (+{bad - 1} more not up)" if bad > 1 else "")
        down = next((lk for lk in links if lk.state != "connected"), None)
        self.conn_state, self.conn_reason = (down.state, down.reason) if down else ("connected", links[0].reason)
        changed = state != self.state
        self.state, self.reason = state, reason
        if changed:
            log.info("%s: feed is %s (%s)", self.exchange, state, reason, extra={"fields": {
                "event": "feed_state", "exchange": self.exchange, "state": state, "reason": reason,
                "shard": self.status_suffix}})
        if changed or heartbeat:
            self.publish_status(now)

    def status_fields(self, now: int) -> dict[str, str | int]:
        s = self.stats
        links = self.links
        sups = self.supervisors
        since = [sup.connected_since_us for sup in sups]
        fields = status_hash_fields(
            state=self.state, reason=self.reason, connection=self.conn_state, url=sups[0].url, updated_us=now,
            connected_since_us=max(since) if all(since) else 0, last_msg_us=s.last_md_us,
            last_frame_us=s.last_frame_us, frames=s.frames, msgs_bbo=s.messages["bbo"], msgs_book=s.messages["book"],
            msgs_trade=s.messages["trade"], reconnects=sum(sup.reconnects for sup in sups),
            pings_sent=sum(sup.pings_sent for sup in sups), rejected=s.rejected_total, exchange_errors=s.errors,
            published=self.publisher.published, dropped=self.publisher.dropped, redis_errors=self.publisher.errors,
            pairs=len(self.pairs), shard=self.status_suffix, connections=len(links),
            connections_up=sum(1 for lk in links if lk.feed == "up"),
        )
        for link in links:
            k = f"conn{link.index + 1}_"
            fields[k + "state"] = link.feed
            fields[k + "connection"] = link.state
            fields[k + "reconnects"] = link.supervisor.reconnects
            fields[k + "last_msg_us"] = link.last_md_us
            if link.plan is not None:
                fields[k + "pairs"] = len(link.plan.symbols)
                fields[k + "subscriptions"] = len(link.plan.keys)
        for reason, n in s.rejected.items():
            fields[f"rejected_{reason}"] = n
        return fields

    def publish_status(self, now: int) -> None:
        reason = f"shard {self.status_suffix}: {self.reason}" if self.status_suffix else self.reason
        self.publisher.submit_status(FeedStatus(self.exchange, self.state, reason, now, self.status_suffix),
                                     self.status_fields(now))

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
        self.recorder.start()
        self.publish_status(now_us())
        self._tasks = [asyncio.create_task(self.publisher.run()), asyncio.create_task(self._ticker())]
        try:
            await asyncio.gather(*(sup.run() for sup in self.supervisors))
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Announce ``down`` and flush, so consumers stop trusting our prices at once."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.conn_state, self.conn_reason = "stopped", "ingestor stopped"
        for link in self.links:
            link.state, link.feed = "stopped", "down"
        self.state, self.reason = "down", "ingestor stopped"
        self.publish_status(now_us())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publisher.flush(), 3.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publisher.aclose(), 1.0)
        await asyncio.to_thread(self.recorder.stop)

    def stop(self) -> None:
        for sup in self.supervisors:
            sup.stop()
