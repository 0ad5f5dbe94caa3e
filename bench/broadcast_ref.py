"""The fan-out reference of ``bench.fanout_ratio``: a bare ``websockets`` server pushing with ``broadcast()``.

``python -m bench.broadcast_ref PORT REDIS_URL``: the practical ceiling of a Python WebSocket server, as the
``websockets`` documentation recommends writing one (``websockets.asyncio.server.serve``, ``broadcast()``, uvloop
like the gateway, no compression). A client names its group in the URL (``/ws?group=<name>``; anything it sends is
read and ignored). The frames come from Redis pub/sub, channel ``CHANNEL``, one message per frame:
``<group>,<group>...\\n<payload>``, and each is broadcast as a text frame (``text=True``: no re-encoding) to every
client of those groups. Nothing of it is in the product.
"""

from __future__ import annotations

import sys
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

CHANNEL = "bench:ref:frames"


async def main(port: int, redis_url: str) -> None:
    groups: dict[bytes, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        name = parse_qs(urlsplit(ws.request.path).query).get("group", [""])[0].encode()
        members = groups.setdefault(name, set())
        members.add(ws)
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:  # the load clients go without a close frame: no traceback for that
            pass
        finally:
            members.discard(ws)

    r = aioredis.Redis.from_url(redis_url)
    ps = r.pubsub()
    await ps.subscribe(CHANNEL)
    async with serve(handler, "127.0.0.1", port, max_size=2**16, compression=None):
        while True:
            msg = await ps.get_message(timeout=1.0)
            if msg is None or msg["type"] != "message":
                continue
            head, _, payload = msg["data"].partition(b"\n")
            names = head.split(b",")
            if len(names) == 1:
                broadcast(groups.get(names[0], ()), payload, text=True)
            else:
                broadcast([c for g in names for c in groups.get(g, ())], payload, text=True)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
