"""The gateway's Prometheus metrics (``GET /metrics``), and the ASGI middleware timing HTTP requests.

With several uvicorn workers ``python -m gateway`` sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary
directory) before anything imports ``prometheus_client``: each worker then writes its values to files there and
whichever worker answers ``/metrics`` adds them all up (``MultiProcessCollector``). Without that variable (tests,
an app built in-process) the ordinary process-wide registry is used.

Hot paths stay cheap: a WebSocket connection counts what it sent in a plain integer and adds it to the
counter in one step when its queue runs dry (``Connection``), not once per frame.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.services.readiness import FeedCheck

__all__ = ["CONTENT_TYPE_LATEST"]

WS_CONNECTIONS = Gauge("sr_gateway_ws_connections", "Connected WebSocket clients", multiprocess_mode="livesum")
WS_SUBSCRIPTIONS = Gauge("sr_gateway_ws_subscriptions", "Active WebSocket subscriptions by stream", ["stream"],
                         multiprocess_mode="livesum")
WS_MESSAGES_SENT = Counter("sr_gateway_ws_messages_sent", "Frames sent to WebSocket clients")
WS_CONFLATED = Counter("sr_gateway_ws_conflated",
                       "Pending frames replaced by a newer one for a slow client (best touch, klines, ewma)")
WS_DROPPED = Counter("sr_gateway_ws_dropped", "Pending frames discarded when a client was closed as too slow")
WS_SLOW_CLOSES = Counter("sr_gateway_ws_slow_closes", "Clients closed for being too slow, by close code", ["code"])
ORDERS = Counter("sr_gateway_orders", "Order submissions (REST and WebSocket) by result and code",
                 ["result", "code"])
AUTH_REFUSALS = Counter("sr_gateway_auth_refusals", "Requests refused before any password was hashed, by reason",
                        ["reason"])
REVOCATIONS = Counter("sr_gateway_revocations", "Credential changes this gateway announced on auth:revocations",
                      ["kind"])
WS_REVOKED_CLOSES = Counter("sr_gateway_ws_revoked_closes",
                            "WebSockets closed (4001) because their token or API key was revoked or expired")
HTTP_LATENCY = Histogram("sr_gateway_http_request_duration_seconds", "HTTP request latency by route template",
                         ["method", "route", "status"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))

_FEED_STATES = ("up", "stale", "down")


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)  # type: ignore[no-untyped-call]  # unannotated in prometheus_client
        return reg
    return REGISTRY


def feed_families(feeds: dict[str, FeedCheck]) -> list[GaugeMetricFamily]:
    """Feed gauges computed when scraped (not stored), so every worker reports the same fresh figure."""
    hb = GaugeMetricFamily("sr_feed_heartbeat_age_seconds",
                           "Seconds since the exchange's ingestor last reported its feed state", labels=["exchange"])
    data = GaugeMetricFamily("sr_feed_data_age_seconds",
                             "Seconds since the ingestor last received market data (feed staleness)",
                             labels=["exchange"])
    state = GaugeMetricFamily("sr_feed_state", "1 for the feed's current state (up/stale/down)",
                              labels=["exchange", "state"])
    for ex, v in sorted(feeds.items()):
        if v.heartbeat_age_s is not None:
            hb.add_metric([ex], v.heartbeat_age_s)
        if v.data_age_s is not None:
            data.add_metric([ex], v.data_age_s)
        for s in _FEED_STATES:
            state.add_metric([ex, s], 1.0 if v.state == s else 0.0)
    return [hb, data, state]


def render(feeds: dict[str, FeedCheck], redis_ok: bool, matcher_alive: bool) -> bytes:
    extra = CollectorRegistry(auto_describe=False)

    class _Feeds:
        def collect(self) -> list[GaugeMetricFamily]:
            up = GaugeMetricFamily("sr_redis_up", "1 when Redis answered the gateway's probe", value=float(redis_ok))
            alive = GaugeMetricFamily("sr_matcher_alive", "1 when the matcher's heartbeat key is present",
                                      value=float(matcher_alive))
            return [up, alive, *feed_families(feeds)]

    extra.register(_Feeds())
    report_queue_stats()  # this worker's figures are current; the other workers' are at most a second old
    return generate_latest(_registry()) + generate_latest(extra)


class QueueStats:
    """Process-wide totals over every WebSocket client queue, kept as plain ints on the hot path
    (``gateway.realtime.queue``); ``report_queue_stats`` turns them into Prometheus counters once a second."""

    sent = 0
    conflated = 0


_reported = {"sent": 0, "conflated": 0}


def report_queue_stats() -> None:
    """Add what the client queues counted since the last call to the counters."""
    for name, counter in (("sent", WS_MESSAGES_SENT), ("conflated", WS_CONFLATED)):
        total = getattr(QueueStats, name)
        if total > _reported[name]:
            counter.inc(total - _reported[name])
            _reported[name] = total


async def queue_stats_reporter(period_s: float = 1.0) -> None:
    while True:
        await asyncio.sleep(period_s)
        report_queue_stats()


def worker_exit() -> None:
    """A worker going away: its ``live*`` gauges stop counting (multiprocess mode only)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]  # unannotated in prometheus_client


_http_children: dict[tuple[str, str, int], Any] = {}  # labels() validates and locks on every call


def observe_http(method: str, template: str, status: int, seconds: float) -> None:
    """One HTTP request answered, for ``HTTP_LATENCY``."""
    key = (method, template, status)
    child = _http_children.get(key)
    if child is None:
        child = _http_children[key] = HTTP_LATENCY.labels(method, template, str(status))
    child.observe(seconds)


class HttpMetricsMiddleware:
    """Times every HTTP request; labelled by the matched route's template (``/orders/{token_id}``), never the raw
    path, so the label set stays small. Unmatched paths share the label ``unmatched``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            observe_http(scope.get("method", ""), template, status, time.perf_counter() - start)
