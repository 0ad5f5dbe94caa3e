"""``python -m simulator`` as a process: prints its URLs, serves, exits cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

from websockets.asyncio.client import connect

from tests.simtools import recv_until


async def test_cli_prints_urls_serves_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator", "--binance-port", "0", "--okx-port", "0", "--seed", "3", "--rate", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        urls = {}
        while len(urls) < 2:
            line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
            assert line, "simulator exited early"
            key, _, value = line.partition("=")
            urls[key] = value
        assert urls["BINANCE_WS_URL"].startswith("ws://127.0.0.1:")
        assert urls["OKX_WS_URL"].endswith("/ws/v5/public")
        async with connect(urls["BINANCE_WS_URL"] + "/ws/xrpusdt@bookTicker") as ws:
            assert (await recv_until(ws, lambda m: "u" in m))["s"] == "XRPUSDT"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert proc.stderr is not None
        assert b"simulator up: binance ws://127.0.0.1:" in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
