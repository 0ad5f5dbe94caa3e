"""The matcher: settles paper orders against the live best touch (``python -m matcher``)."""
import asyncio
import signal

from matcher.engine import run_matcher
from shared.logs import setup_logging
from shared.settings import get_settings


async def main() -> None:
    settings = get_settings()
    setup_logging("matcher", settings.log.level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_matcher(settings, stop)


asyncio.run(main())
