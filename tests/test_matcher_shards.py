"""Matcher shards over a real Redis and the gateway over real HTTP: leases, takeover by a standby, the durable
intake (entries a dead holder read but never acknowledged are claimed), and the open set that replaces the scan."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
import redis.asyncio as aioredis

from matcher import shards
from shared import ledger, ledger_store, names
from tests.ledger_audit import audit_users
from tests.servers import CLUSTER_PASS, make_settings, run_gateway
from tests.trading_helpers import auth, matcher, publish_bbo, publish_status, wait_status, wait_until

pytestmark = pytest.mark.asyncio

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


@contextlib.asynccontextmanager
async def matcher_process(redis_url: str, **env: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m matcher``, as the launcher runs it; killed (by its pid) when the block ends."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SR_")}
    full.update(REDIS_URL=redis_url, LOG_LEVEL="WARNING", SR_METRICS__MATCHER_PORT="0", **env)
    if CLUSTER_PASS:
        full["REDIS_CLUSTER"] = "1"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "matcher", env=full)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


async def lease_holders(r: aioredis.Redis, total: int) -> list[bytes | None]:
    return [await r.get(names.lease_key(n)) for n in range(total)]


async def buy(c: httpx.AsyncClient, h: dict[str, str], token: str, symbol: str, price: str) -> None:
    qty = "1"
    r = await c.post("/orders", json={"token_id": token, "symbol": symbol, "side": "buy", "price": price,
                                      "quantity": qty}, headers=h)
    assert r.status_code == 201, r.text


async def test_pairs_spread_over_shards() -> None:
    got = {names.matcher_shard(s, 2) for s in SYMBOLS}
    assert got == {0, 1}, "the test pairs must cover both shards"
    assert all(names.matcher_shard(s, 1) == 0 for s in SYMBOLS)


async def test_standby_takes_over_a_dead_matchers_shards(redis_url: str, aredis: aioredis.Redis) -> None:
    settings = make_settings(redis_url, SR_MATCHER__SHARDS="2", SR_MATCHER__LEASE_MS="600")
    h = auth(settings, "alice")
    async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base) as c:
        assert (await c.post("/deposit", json={"asset": "USDT", "amount": 100000}, headers=h)).status_code == 200
        for ex in ("binance", "okx"):
            await publish_status(aredis, ex)
        env = {"SR_MATCHER__SHARDS": "2", "SR_MATCHER__LEASE_MS": "600"}
        async with matcher_process(redis_url, **env) as first:
            async def both_held() -> bool:
                held = await lease_holders(aredis, 2)
                return held[0] is not None and held[0] == held[1]  # the first matcher takes every free shard

            await wait_until(both_held, 20, "the first matcher holding both shards")
            held = await lease_holders(aredis, 2)
            async with matcher(settings, redis_url):  # a standby: nothing left to take
                assert await lease_holders(aredis, 2) == held
                for i, sym in enumerate(SYMBOLS):  # resting orders in both shards, held by the first matcher
                    await buy(c, h, f"r{i}", sym, "100")
                first.kill()  # kill -9: no clean stop, its leases are left to expire
                await first.wait()

                async def taken() -> bool:
                    now = await lease_holders(aredis, 2)
                    return all(x is not None and x != held[0] for x in now)

                await wait_until(taken, 10, "the standby holding both shards")
                for ex in ("binance", "okx"):
                    await publish_status(aredis, ex)
                for sym in SYMBOLS:  # the market comes down to the resting orders: the new holder fills them
                    await publish_bbo(aredis, "okx", sym, "90", "99")
                for i in range(len(SYMBOLS)):
                    await wait_status(c, f"r{i}", "filled", h)
        ledger.check_invariants(await ledger_store.get_account(aredis, "alice"),
                                await ledger_store.open_orders(aredis, "alice"))


async def test_kill_9_of_the_active_matcher_mid_burst(redis_url: str, aredis: aioredis.Redis) -> None:
    """Orders keep coming while the matcher holding every shard is killed: the standby takes the shards, every
    marketable order reaches its final state, every resting one stays open, and the ledgers audit clean."""
    lease = {"SR_MATCHER__SHARDS": "2", "SR_MATCHER__LEASE_MS": "600"}
    settings = make_settings(redis_url, **lease)
    users = [f"burst{i}" for i in range(4)]
    heads = {u: auth(settings, u) for u in users}
    acked: dict[str, list[str]] = {u: [] for u in users}
    async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        for u in users:
            assert (await c.post("/deposit", json={"asset": "USDT", "amount": 1_000_000}, headers=heads[u])).is_success
        for ex in ("binance", "okx"):
            await publish_status(aredis, ex)
        for sym in SYMBOLS:
            await publish_bbo(aredis, "okx", sym, "100", "101", bid_sz="1000", ask_sz="1000")
        async with matcher_process(redis_url, **lease) as first:
            async def both_held() -> bool:
                held = await lease_holders(aredis, 2)
                return held[0] is not None and held[0] == held[1]

            await wait_until(both_held, 20, "the first matcher holding both shards")
            async with matcher(settings, redis_url):
                killed = asyncio.Event()

                async def burst() -> None:
                    for i in range(120):
                        u, sym = users[i % len(users)], SYMBOLS[i % len(SYMBOLS)]
                        ioc = i % 2 == 0
                        body = {"token_id": f"b{i}", "symbol": sym, "side": "buy", "type": "ioc" if ioc else "limit",
                                "price": "101" if ioc else "50", "quantity": "1"}
                        r = await c.post("/orders", json=body, headers=heads[u])
                        assert r.status_code == 201, r.text
                        acked[u].append(f"b{i}")
                        if i == 40:
                            first.kill()  # kill -9 in the middle of the flow
                            killed.set()

                await burst()
                assert killed.is_set()
                await first.wait()
                for i in range(120):
                    u = users[i % len(users)]
                    await wait_status(c, f"b{i}", "filled" if i % 2 == 0 else "open", heads[u], within=20)
    reports = await audit_users(redis_url, {u: {"USDT": Decimal(1_000_000)} for u in users}, acked)
    assert sum(r.by_status().get("filled", 0) for r in reports.values()) == 60


async def test_entries_a_dead_holder_never_acknowledged_are_claimed(redis_url: str, aredis: aioredis.Redis) -> None:
    settings = make_settings(redis_url)
    h = auth(settings, "bob")
    async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base) as c:
        assert (await c.post("/deposit", json={"asset": "USDT", "amount": 100000}, headers=h)).status_code == 200
        await publish_bbo(aredis, "okx", "BTCUSDT", "49000", "49500")
        await shards.ensure_group(aredis, 0)
        await buy(c, h, "m1", "BTCUSDT", "50000")  # marketable: the matcher fills it as soon as it reads it
        # A holder that read the entry and died before acknowledging it.
        read = await shards.read_new(aredis, 0, "ghost", 100)
        assert [e for e in read if b'"m1"' in e.order]
        async with matcher(settings, redis_url):
            await wait_status(c, "m1", "filled", h)
        pending = await aredis.xpending(names.intake_stream(0), names.INTAKE_GROUP)
        assert pending["pending"] == 0


async def test_the_open_set_replaces_the_scan(redis_url: str, aredis: aioredis.Redis,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(redis_url)
    h = auth(settings, "carol")
    async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base) as c:
        assert (await c.post("/deposit", json={"asset": "USDT", "amount": 100000}, headers=h)).status_code == 200
        await publish_bbo(aredis, "okx", "BTCUSDT", "49000", "49500")
        await buy(c, h, "before", "BTCUSDT", "100")  # placed before any matcher ever ran: found by the one scan
        async with matcher(settings, redis_url):
            await buy(c, h, "rest", "BTCUSDT", "200")
            await buy(c, h, "gone", "BTCUSDT", "300")
            assert (await c.delete("/orders/gone", headers=h)).status_code == 200

            async def recorded() -> bool:
                members = {m.decode() for m in await aredis.zrange(names.shard_open_key(0), 0, -1)}
                return members == {"carol before", "carol rest"}

            await wait_until(recorded, 5, "the open set holding exactly the open orders")

        async def no_scan(_: aioredis.Redis) -> list[ledger.Order]:
            raise AssertionError("a matcher taking over must not scan the keyspace")

        monkeypatch.setattr(ledger_store, "scan_open_orders", no_scan)
        async with matcher(settings, redis_url):
            await publish_bbo(aredis, "okx", "BTCUSDT", "150", "199")  # fills "rest" (200) only
            await wait_status(c, "rest", "filled", h)
            assert (await c.get("/orders/before", headers=h)).json()["status"] == "open"

            async def closed_forgotten() -> bool:
                members = {m.decode() for m in await aredis.zrange(names.shard_open_key(0), 0, -1)}
                return members == {"carol before"}

            await wait_until(closed_forgotten, 5, "the filled order out of the open set")
