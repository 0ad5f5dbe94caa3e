"""The matcher's Prometheus metrics, served on ``[metrics] matcher_port`` (0 = off) by ``python -m matcher``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=False)

OPEN_ORDERS = Gauge("sr_matcher_open_orders", "Resting limit orders in the matcher's index", registry=REGISTRY)
PENDING = Gauge("sr_matcher_pending_orders", "Recovered market/IOC orders waiting for the feeds", registry=REGISTRY)
FILLS = Counter("sr_matcher_fills", "Executions applied (one order can fill in several legs)", ["symbol", "exchange"],
                registry=REGISTRY)
ORDERS = Counter("sr_matcher_orders", "Orders closed by the matcher, by final status", ["status"], registry=REGISTRY)
HANDLE_SECONDS = Histogram("sr_matcher_loop_seconds",
                           "Time to handle one message (market data, feed status or order nudge), settlements included",
                           buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25, 1.0),
                           registry=REGISTRY)
RECOVERIES = Counter("sr_matcher_recoveries", "Full rescans of the open orders (start, reconnect, periodic)",
                     registry=REGISTRY)
FENCED = Counter("sr_matcher_fenced_orders", "Announced placements that never arrived and were fenced (cluster)",
                 registry=REGISTRY)
REDIS_RECONNECTS = Counter("sr_matcher_redis_reconnects", "Lost Redis connections", registry=REGISTRY)
