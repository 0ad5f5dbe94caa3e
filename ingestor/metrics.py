"""Prometheus metrics of one ingestor, served on ``[metrics] ingestor_<exchange>_port`` (0 = off).

Nothing is counted twice on the hot path: the counters the ingestor already keeps in plain integers
(``FeedStats``, the supervisor, the publisher) are read when Prometheus scrapes (a custom collector). The only
observation made as it happens is the publish batch size, once per Redis batch (hundreds of frames).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ingestor.service import Ingestor
from shared.timeutil import now_us

BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000)
FEED_STATES = ("up", "stale", "down")


class IngestorCollector:
    def __init__(self, ingestor: Ingestor) -> None:
        self.ing = ingestor

    def collect(self) -> Iterator[Metric]:
        ing = self.ing
        ex = ing.exchange
        s = ing.stats
        sups = ing.supervisors
        pub = ing.publisher

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["exchange"])
            c.add_metric([ex], value)
            return c

        msgs = CounterMetricFamily("sr_ingestor_messages", "Market data messages normalized, by channel",
                                   labels=["exchange", "channel"])
        for kind, n in dict(s.messages).items():
            msgs.add_metric([ex, kind], n)
        yield msgs
        yield counter("sr_ingestor_frames", "WebSocket frames received from the exchange", s.frames)
        rejected = CounterMetricFamily("sr_ingestor_rejected_frames", "Frames rejected (never published), by reason",
                                       labels=["exchange", "reason"])
        for reason, n in sorted(dict(s.rejected).items()):
            rejected.add_metric([ex, reason], n)
        yield rejected
        yield counter("sr_ingestor_reconnects", "Connections redialled", sum(sup.reconnects for sup in sups))
        yield counter("sr_ingestor_exchange_errors", "Errors the exchange reported (OKX error events)", s.errors)
        yield counter("sr_ingestor_pings", "Keepalive pings sent", sum(sup.pings_sent for sup in sups))
        yield counter("sr_ingestor_published", "Messages published to Redis", pub.published)
        yield counter("sr_ingestor_dropped", "Messages dropped because Redis was away or too slow", pub.dropped)
        yield counter("sr_ingestor_redis_errors", "Failed publish calls", pub.errors)
        state = GaugeMetricFamily("sr_ingestor_feed_state", "1 for the feed's current state",
                                  labels=["exchange", "state"])
        for st in FEED_STATES:
            state.add_metric([ex, st], 1.0 if ing.state == st else 0.0)
        yield state
        connected = GaugeMetricFamily("sr_ingestor_connected", "1 while every exchange connection is up",
                                      labels=["exchange"])
        connected.add_metric([ex], 1.0 if ing.conn_state == "connected" else 0.0)
        yield connected
        conns = GaugeMetricFamily("sr_ingestor_connections", "Exchange connections, by connection state",
                                  labels=["exchange", "state"])
        for st in ("connecting", "connected", "disconnected", "stopped"):
            conns.add_metric([ex, st], float(sum(1 for lk in ing.links if lk.state == st)))
        yield conns
        rec = ing.recorder
        if rec.enabled:
            yield counter("sr_ingestor_recorded_frames", "Raw frames written to the recording", rec.recorded)
            yield counter("sr_ingestor_recording_dropped", "Raw frames the recording lost (writer behind, or a "
                          "failed write); live frames are never affected", rec.dropped)
            yield counter("sr_ingestor_recording_errors", "Recording write, flush or open failures", rec.errors)
            yield counter("sr_ingestor_recorded_bytes", "Bytes of recording lines written (before compression)",
                          rec.bytes_written)
        if s.last_md_us:
            age = GaugeMetricFamily("sr_ingestor_data_age_seconds", "Seconds since the last market data message",
                                    labels=["exchange"])
            age.add_metric([ex], max(0, now_us() - s.last_md_us) / 1e6)
            yield age


def ingestor_registry(ingestor: Ingestor) -> CollectorRegistry:
    """A registry with this ingestor's metrics; also hooks the batch-size histogram into its publisher."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(IngestorCollector(ingestor))
    batches = Histogram("sr_ingestor_publish_batch_size", "Messages per Redis publish call", ["exchange"],
                        buckets=BATCH_BUCKETS, registry=reg)
    ingestor.publisher.on_batch = batches.labels(ingestor.exchange).observe
    return reg
