"""The matcher: settles paper orders against the live best touch (``python -m matcher``)."""
import asyncio
import logging
import signal
import sys

from matcher.engine import run_matcher
from matcher.metrics import REGISTRY
from shared import gctune
from shared.logs import setup_logging
from shared.prom import serve
from shared.redis_conn import WrongMode
from shared.settings import get_settings


async def main() -> None:
    settings = get_settings()
    setup_logging("matcher", settings.log.level, settings.log.json_logs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = serve(REGISTRY, settings.metrics.host, settings.metrics.matcher_port, "matcher")
    try:
        with gctune.frozen():  # no full-heap collection stalling a fill (shared/gctune.py)
            await run_matcher(settings, stop)
    finally:
        if server is not None:
            server.shutdown()


try:
    asyncio.run(main())
except WrongMode as e:
    logging.getLogger("matcher").error("%s", e)
    sys.exit(2)
