"""Gateway memory per connected client: ``python -m bench.ws_memory [--clients 1000]``.

In one run: a bare ``websockets`` server (the reference: it accepts and holds connections, nothing else) and the
gateway (``python -m gateway``, one uvicorn worker, on an embedded redis-server), each given ``--clients``
WebSocket clients that connect (the gateway's with a token, so authenticated) and stay idle; then, on a second fresh
gateway (freed memory is not given back, so a reused process would under-count), as many subscribed to one pair's
best touch. RSS (``/proc/<pid>/status`` VmRSS, the process and its children) is read
before and after, once the connections settle; the result is KB per client for each, and the gateway's ratio to
the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.orders import SECRET, process_tree, spawn, stop_procs, wait_port
from bench.rawws import RawClient, Stats, client_frame, connect
from shared import tokens
from shared.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent

BARE = """
import asyncio, sys
from websockets.asyncio.server import serve

async def hold(ws):
    async for _ in ws:
        pass

async def main():
    async with serve(hold, "127.0.0.1", int(sys.argv[1]), max_size=2**16):
        await asyncio.Future()

asyncio.run(main())
"""


def rss_kb(pid: int) -> int:
    total = 0
    for p in process_tree([pid]):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def settle(pid: int, within: float = 5.0) -> int:
    """RSS once it stops moving (two reads 0.5 s apart within 1 %)."""
    last = rss_kb(pid)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = rss_kb(pid)
        if abs(now - last) <= last // 100:
            return now
        last = now
    return last


async def hold(url: str, n: int, subscribe: bytes | None = None) -> list[RawClient]:
    stats = Stats()
    out: list[RawClient] = []
    for i in range(0, n, 100):
        batch = await asyncio.gather(*[connect(url, stats) for _ in range(min(100, n - i))])
        out.extend(batch)
    if subscribe is not None:
        for c in out:
            assert c.transport is not None
            c.transport.write(client_frame(1, subscribe))
    return out


def close_all(clients: list[RawClient]) -> None:
    for c in clients:
        c.close()


async def measure(name: str, pid: int, url: str, n: int, subscribe: bytes | None = None) -> float:
    before = await settle(pid)
    clients = await hold(url, n, subscribe)
    after = await settle(pid)
    close_all(clients)
    per = (after - before) / n
    print(f"{name:<38} RSS {before / 1024:7.1f} MB -> {after / 1024:7.1f} MB: {per:6.1f} KB per client")
    await asyncio.sleep(1.0)
    return per


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1000)
    args = ap.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedRedis(tmp).start()
        try:
            bare_port, gw_port, gw2_port = free_port(), free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], cwd=ROOT,  # noqa: ASYNC220
                                          start_new_session=True))
            env = {**os.environ, "REDIS_URL": srv.url, "JWT_SECRET": SECRET, "PORT": str(gw_port),
                   "SR_GATEWAY__WORKERS": "1", "LOG_LEVEL": "WARNING"}
            procs.append(spawn("gateway", env))
            procs.append(spawn("gateway", {**env, "PORT": str(gw2_port)}))  # a fresh one for the subscribed phase
            for port in (bare_port, gw_port, gw2_port):
                await wait_port(port)
            tok = tokens.issue("mem", SECRET, 3600)
            gw_url = f"ws://127.0.0.1:{gw_port}/ws?token={tok}"
            gw2_url = f"ws://127.0.0.1:{gw2_port}/ws?token={tok}"
            for url in (gw_url, gw2_url):
                warm = await hold(url, 20)  # imports, first-connection allocations: not per client
                close_all(warm)
            await asyncio.sleep(1.0)
            ref = await measure("bare websockets server, idle", procs[0].pid, f"ws://127.0.0.1:{bare_port}/",
                                args.clients)
            idle = await measure("gateway, idle (authenticated)", procs[1].pid, gw_url, args.clients)
            sub = orjson.dumps({"action": "subscribe", "stream": "best_touch", "symbol": "BTCUSDT", "exchange": "all"})
            busy = await measure("gateway, subscribed to a best touch", procs[2].pid, gw2_url, args.clients, sub)
            print(f"RESULT gateway idle client {idle:.1f} KB (target <= 50 KB), {idle / ref:.2f}x the bare server's "
                  f"{ref:.1f} KB; subscribed {busy:.1f} KB ({args.clients} clients)")
        finally:
            stop_procs(procs)
            srv.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
