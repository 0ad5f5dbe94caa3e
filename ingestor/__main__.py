"""``python -m ingestor binance|okx [--shard i/n | --pairs A,B]``: one exchange's ingestor until SIGINT/SIGTERM.

``--shard``/``--pairs`` default to ``ingestor.shard``/``ingestor.pairs`` (``SR_INGESTOR__SHARD=1/2``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from ingestor.metrics import ingestor_registry
from ingestor.planning import Shard, parse_shard, select_pairs, status_suffix
from ingestor.service import Ingestor
from recorder.writer import make_recorder
from shared.logs import setup_logging
from shared.prom import serve
from shared.redis_conn import WrongMode, check_mode, connect_any
from shared.settings import EXCHANGES, get_settings

log = logging.getLogger("ingestor")


async def main(exchange: str, shard: Shard | None = None, only: Sequence[str] = ()) -> None:
    settings = get_settings()
    pairs = select_pairs(settings.pairs, shard, only)
    suffix = status_suffix(shard, only)
    redis = connect_any(settings.redis.url or "redis://127.0.0.1:6379/0", settings.redis.cluster)
    await check_mode(redis)
    recorder = make_recorder(settings, exchange, suffix)
    ingestor = Ingestor(settings, exchange, redis, pairs=pairs, status_suffix=suffix, recorder=recorder)
    if recorder.enabled:
        log.info("%s: recording raw frames under %s", exchange, settings.recording.path)
    log.info("%s: %d pairs%s on %d connection(s)", exchange, len(pairs), f" (shard {suffix})" if suffix else "",
             len(ingestor.links), extra={"fields": {"event": "ingestor_plan", "exchange": exchange, "shard": suffix,
                                                    "pairs": len(pairs), "connections": len(ingestor.links)}})
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


def parse_args(argv: Sequence[str] | None = None) -> tuple[str, Shard | None, tuple[str, ...]]:
    ap = argparse.ArgumentParser(prog="python -m ingestor", description="Run one exchange's market data ingestor.")
    ap.add_argument("exchange", choices=EXCHANGES)
    ap.add_argument("--shard", metavar="I/N", default=None,
                    help="serve the I-th of N shards of the pairs (sorted by symbol, every N-th); "
                         "default: ingestor.shard")
    ap.add_argument("--pairs", metavar="A,B", default=None,
                    help="serve only these pairs (our symbols, comma-separated); default: ingestor.pairs")
    args = ap.parse_args(argv)
    settings = get_settings()
    try:
        shard = parse_shard(settings.ingestor.shard if args.shard is None else args.shard)
        only = settings.ingestor.pairs if args.pairs is None else tuple(
            p.strip().upper() for p in args.pairs.split(",") if p.strip())
        if not select_pairs(settings.pairs, shard, only):
            raise ValueError("no pairs left to serve")
    except ValueError as e:
        ap.error(str(e))
    return args.exchange, shard, only


if __name__ == "__main__":
    exchange, shard, only = parse_args()
    setup_logging(f"ingestor-{exchange}", get_settings().log.level, get_settings().log.json_logs)
    try:
        import uvloop  # comes with uvicorn[standard]; a faster event loop for the read path
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(main(exchange, shard, only))
    except WrongMode as e:
        log.error("%s", e)
        sys.exit(2)
