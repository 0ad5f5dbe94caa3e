"""``python -m ingestor binance|okx``: one exchange's ingestor until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal

from ingestor.metrics import ingestor_registry
from ingestor.service import Ingestor
from shared.logs import setup_logging
from shared.prom import serve
from shared.redis_conn import connect
from shared.settings import EXCHANGES, get_settings


async def main(exchange: str) -> None:
    settings = get_settings()
    redis = connect(settings.redis.url or "redis://127.0.0.1:6379/0")
    ingestor = Ingestor(settings, exchange, redis)
    server = serve(ingestor_registry(ingestor), settings.metrics.host, settings.metrics.ingestor_port(exchange),
                   f"ingestor-{exchange}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ingestor.stop)
    try:
        await ingestor.run()
    finally:
        await redis.aclose()
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m ingestor", description="Run one exchange's market data ingestor.")
    ap.add_argument("exchange", choices=EXCHANGES)
    args = ap.parse_args()
    setup_logging(f"ingestor-{args.exchange}", get_settings().log.level, get_settings().log.json_logs)
    try:
        import uvloop  # comes with uvicorn[standard]; a faster event loop for the read path
    except ImportError:
        asyncio.run(main(args.exchange))
    else:
        uvloop.run(main(args.exchange))
