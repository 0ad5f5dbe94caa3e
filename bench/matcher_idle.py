"""Matcher CPU per settled order with few users and with a million idle ones:
``python -m bench.matcher_idle [--idle 1000000] [--orders 3000] [--users 1000]``.

One ``python -m matcher`` process on an embedded redis-server. Each phase places ``--orders`` marketable limit
orders from ``--users`` funded users, straight through ``shared.ledger_store`` as the gateway does, with the touch
published so that each fills on arrival, and measures the matcher's CPU (utime + stime from /proc) from the first
order until the last is filled. Phase 1 runs on an empty keyspace; then ``--idle`` users are added (two keys each:
a balance hash and an account hash, no orders: 2M keys for 1M users) and phase 2 runs the same flow. The matcher
finds orders on its shard's intake stream and keeps the shard's open set, so the two figures should match; for
reference, one full ``scan_open_orders`` (what the matcher used to run every 60 s) is timed on the big keyspace.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from decimal import Decimal

import redis.asyncio as aioredis

from bench.orders import bbo, cpu_s, heartbeat, spawn
from shared import ledger_store, names
from shared.embedded_redis import EmbeddedRedis
from shared.ledger import PairRules
from shared.settings import load_settings
from shared.timeutil import now_us

# Server-side, so that two million keys take seconds, not minutes.
_POPULATE = """
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  local id = 'idle' .. i
  redis.call('HSET', '{u:' .. id .. '}:bal', 't:USDT', '1000', 'r:USDT', '0')
  redis.call('HSET', 'user:{u:' .. id .. '}', 'id', id, 'username', id, 'created_us', '0', 'pw_hash', 'x')
end
return 0
"""


async def populate(r: aioredis.Redis, n: int, batch: int = 50_000) -> float:
    t0 = time.monotonic()
    script = r.register_script(_POPULATE)
    for lo in range(0, n, batch):
        await script(keys=[], args=[lo, min(n, lo + batch) - 1])
    return time.monotonic() - t0


async def phase(r: aioredis.Redis, matcher_pid: int, rules: PairRules, tag: str, users: int, orders: int) -> float:
    for u in range(users):
        await ledger_store.deposit(r, f"{tag}{u}", "USDT", Decimal(10_000_000))
    await bbo(r, "49000", "49500")
    cpu0 = cpu_s([matcher_pid])
    t0 = time.monotonic()
    for i in range(orders):
        await ledger_store.place(r, rules, user_id=f"{tag}{i % users}", token_id=f"o{i}", side="buy", type_="limit",
                                 price=Decimal(50000), quantity=Decimal("0.001"), now_us=now_us())
    last = (f"{tag}{(orders - 1) % users}", f"o{orders - 1}")
    while True:
        o = await ledger_store.get_order(r, *last)
        if o is not None and o.status == "filled":
            break
        await asyncio.sleep(0.01)
    open_left = 0
    for u in range(users):
        open_left += len(await ledger_store.open_orders(r, f"{tag}{u}"))
    cpu = cpu_s([matcher_pid]) - cpu0
    secs = time.monotonic() - t0
    per = cpu / orders * 1e6
    print(f"  {tag:>6}: {orders} orders filled in {secs:.2f} s, matcher CPU {cpu:.2f} s = {per:,.0f} µs per settled "
          f"order ({open_left} left open)")
    return per


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=int, default=1_000_000)
    ap.add_argument("--orders", type=int, default=3000)
    ap.add_argument("--users", type=int, default=1000)
    args = ap.parse_args()
    settings = load_settings(env={})
    rules = PairRules.of(next(p for p in settings.pairs if p.symbol == "BTCUSDT"))
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedRedis(tmp, appendfsync="everysec").start()
        env = {**os.environ, "REDIS_URL": srv.url, "LOG_LEVEL": "WARNING", "SR_METRICS__MATCHER_PORT": "0"}
        r = aioredis.Redis.from_url(srv.url)
        stop = asyncio.Event()
        hb = asyncio.create_task(heartbeat(r, stop))
        proc = spawn("matcher", env)
        try:
            while not await r.exists(names.lease_key(0)):  # noqa: ASYNC110 - the matcher has taken its shard
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            print(f"matcher CPU per settled order, {args.orders} marketable orders from {args.users} users "
                  f"(matcher.shards = {settings.matcher.shards})")
            small = await phase(r, proc.pid, rules, "few", args.users, args.orders)
            took = await populate(r, args.idle)
            keys = await r.dbsize()
            print(f"  added {args.idle:,} idle users in {took:.1f} s: {keys:,} keys")
            big = await phase(r, proc.pid, rules, "many", args.users, args.orders)
            t0 = time.monotonic()
            await ledger_store.scan_open_orders(r)
            scan = time.monotonic() - t0
            print(f"  ratio (many / few): {big / small:.2f}; one full scan_open_orders on {keys:,} keys: {scan:.2f} s "
                  f"(no longer run by the matcher)")
        finally:
            stop.set()
            await hb
            proc.terminate()
            proc.wait(10)
            await r.aclose()
            srv.stop()


if __name__ == "__main__":
    asyncio.run(main())
