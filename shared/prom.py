"""A small Prometheus HTTP endpoint for the processes that have no web server of their own."""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger("metrics")


def serve(registry: CollectorRegistry, host: str, port: int, what: str) -> WSGIServer | None:
    """Serve ``registry`` on http://host:port/metrics in a thread; a port in use is logged, never fatal."""
    if not port:
        return None
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        log.warning("%s: metrics endpoint not started on %s:%d: %s", what, host, port, e,
                    extra={"fields": {"event": "metrics_port_unavailable", "host": host, "port": port}})
        return None
    log.info("%s: metrics on http://%s:%d/metrics", what, host, port,
             extra={"fields": {"event": "metrics_listening", "host": host, "port": port}})
    return server
