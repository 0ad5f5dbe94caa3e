"""python -m simulator --binance-port P1 --okx-port P2 [--seed N] [--rate X] [--replay PATH ...] [--speed X]
[--from T] [--to T] [--max-gap S] [--wait-all] [--okx-connect-limit N]"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from recorder.format import FormatError, parse_time
from shared.logs import setup_logging
from shared.settings import get_settings
from simulator.sim import Simulator


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m simulator", description="Binance + OKX WebSocket simulator.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--binance-port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--okx-port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=1.0, help="multiplier of every event rate (10 for benchmarks)")
    ap.add_argument("--replay", nargs="+", default=[], metavar="PATH",
                    help="recordings (python -m recorder ls) or capture files, or folders of them, to replay")
    ap.add_argument("--speed", type=float, default=1.0, help="replay speed; 0 = as fast as clients read")
    ap.add_argument("--from", dest="from_", default="", metavar="T",
                    help="replay from this receive time (2026-11-30T10:00, UTC; or Unix seconds)")
    ap.add_argument("--to", default="", metavar="T", help="replay up to this receive time (excluded)")
    ap.add_argument("--max-gap", type=float, default=5.0, metavar="S",
                    help="skip recorded silences longer than S seconds (0: keep them)")
    ap.add_argument("--wait-all", action="store_true",
                    help="start the replay once every configured pair is subscribed on both exchanges")
    ap.add_argument("--walk", action=argparse.BooleanOptionalAction, default=None,
                    help="random walk (default: on unless --replay)")
    ap.add_argument("--ping-interval", type=float, default=20.0, help="Binance server ping period, s")
    ap.add_argument("--okx-idle-timeout", type=float, default=30.0, help="OKX closes silent clients after, s")
    ap.add_argument("--okx-connect-limit", type=int, default=0,
                    help="refuse OKX handshakes beyond N per second with 429 (OKX: 3); 0 = no limit")
    args = ap.parse_args(argv)
    if args.rate <= 0:
        ap.error("--rate must be positive")
    if args.speed < 0:
        ap.error("--speed must be >= 0")
    try:
        args.from_us = parse_time(args.from_) if args.from_ else 0
        args.to_us = parse_time(args.to) if args.to else 0
    except FormatError as e:
        ap.error(str(e))
    if args.from_us and args.to_us and args.to_us <= args.from_us:
        ap.error("--to must be after --from")
    return args


async def run(args: argparse.Namespace) -> None:
    settings = get_settings()
    sim = Simulator(settings=settings, seed=args.seed, rate=args.rate, host=args.host,
                    binance_port=args.binance_port, okx_port=args.okx_port, ping_interval=args.ping_interval,
                    okx_idle_timeout=args.okx_idle_timeout, okx_connect_limit=args.okx_connect_limit,
                    replay=args.replay, speed=args.speed, walk=args.walk, replay_from_us=args.from_us,
                    replay_to_us=args.to_us, max_gap_s=args.max_gap, replay_wait_all=args.wait_all)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        print(f"BINANCE_WS_URL={sim.binance_url}\nOKX_WS_URL={sim.okx_url}", flush=True)
        await stop.wait()
        logging.getLogger("simulator").info("stopping")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging("simulator", get_settings().log.level, get_settings().log.json_logs)
    try:
        asyncio.run(run(args))
    except FileNotFoundError as e:
        print(f"simulator: {e}", file=sys.stderr)
        raise SystemExit(2) from None


main()
