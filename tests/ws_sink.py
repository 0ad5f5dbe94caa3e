"""A WebSocket client process that subscribes to everything, for tests that pause it (SIGSTOP).

``python -m tests.ws_sink --url ws://127.0.0.1:PORT/ws --token JWT --symbols BTCUSDT,ETHUSDT``: authenticates,
subscribes to every stream of every symbol and exchange filter (all kline intervals, one ewma per filter, the
user's orders), prints one line ``READY <local port> <subscriptions>`` on stdout, then reads and discards
whatever arrives until the server closes the connection; it then prints ``CLOSED <code> <reason>`` and exits.
Reading goes on until the test pauses the process: from then on the gateway's frames pile up in the kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.realtime.protocol import EXCHANGE_FILTERS
from shared.klines import INTERVALS_US


def subscriptions(symbols: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"stream": "orders"}]
    for sym in symbols:
        for ex in EXCHANGE_FILTERS:
            base = {"symbol": sym, "exchange": ex}
            out.append({"stream": "best_touch", **base})
            out.append({"stream": "trades", **base})
            out.append({"stream": "ewma", "half_life": 10, **base})
            out.extend({"stream": "klines", "interval": iv, **base} for iv in INTERVALS_US)
    return out


async def run(url: str, token: str, symbols: list[str], rcvbuf: int) -> int:
    async with connect(f"{url}?token={token}", open_timeout=10, close_timeout=2, max_size=None,
                       compression=None) as ws:
        sock = ws.transport.get_extra_info("socket")
        if rcvbuf:  # a smaller receive window fills sooner (lets quick tests reach the slow-client case)
            import socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        subs = subscriptions(symbols)
        for i, sub in enumerate(subs):
            await ws.send(orjson.dumps({"action": "subscribe", "id": i, **sub}).decode())
        acked = 0
        while acked < len(subs):
            m = orjson.loads(await ws.recv())
            if m.get("type") == "error":
                print(f"ERROR {m}", flush=True)
                return 1
            acked += m.get("type") == "ack"
        print(f"READY {sock.getsockname()[1]} {acked}", flush=True)
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        rcvd = ws.close_rcvd
        print(f"CLOSED {rcvd.code if rcvd else 1006} {rcvd.reason if rcvd else ''}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--symbols", required=True, help="comma-separated")
    p.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF in bytes (0: the kernel's default)")
    a = p.parse_args(argv)
    try:
        return asyncio.run(run(a.url, a.token, a.symbols.split(","), a.rcvbuf))
    except (ConnectionClosed, OSError) as e:  # the gateway went away before we were subscribed
        print(f"CLOSED 1006 {type(e).__name__}: {e}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
