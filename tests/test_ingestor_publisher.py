"""The batched publisher against the real redis-server fixture."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import redis.asyncio as aioredis

from ingestor.publisher import Publisher
from shared import names
from shared.schema import BBO, Book, FeedStatus, Trade, decode

D = Decimal


def bbo(bid: str, seq: int, symbol: str = "BTCUSDT") -> BBO:
    return BBO("okx", symbol, D(bid), D("1.5"), D(bid) + D("0.1"), D("0.25"), seq, 10, 11)


async def collect(ps: aioredis.client.PubSub, n: int, within_s: float = 5.0) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    deadline = asyncio.get_running_loop().time() + within_s
    while len(out) < n and asyncio.get_running_loop().time() < deadline:
        m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if m is not None:
            out.append((m["channel"].decode(), m["data"]))
    return out


async def test_messages_reach_their_channels_in_order_and_last_keys_are_conflated(aredis: aioredis.Redis) -> None:
    ps = aredis.pubsub()
    await ps.psubscribe("md:*")
    pub = Publisher(aredis, "okx", max_batch=3)  # several batches for 7 messages
    book = Book("okx", "ETHUSDT", ((D("3000.1"), D("2")),), ((D("3000.2"), D("1")),), 5, 1, 2)
    trade = Trade("okx", "BTCUSDT", "77", D("64000.5"), D("0.01"), "sell", 3, 4)
    msgs = [bbo("64000.1", 1), trade, bbo("64000.2", 2), book, bbo("64000.3", 3), bbo("10", 1, "SOLUSDT"),
            bbo("64000.4", 4)]
    pub.submit(msgs)
    await pub.flush()
    got = await collect(ps, len(msgs))
    await ps.aclose()
    assert [c for c, _ in got] == [names.md_channel(m.type, "okx", m.symbol) for m in msgs]
    assert [decode(p) for _, p in got] == msgs
    assert b'"bid_px":"64000.1"' in got[0][1]
    assert decode(await aredis.get(names.md_last_key("bbo", "okx", "BTCUSDT"))) == msgs[-1]
    assert decode(await aredis.get(names.md_last_key("bbo", "okx", "SOLUSDT"))) == msgs[5]
    assert decode(await aredis.get(names.md_last_key("book", "okx", "ETHUSDT"))) == book
    assert await aredis.keys("md:last:trade:*") == []
    assert pub.published == len(msgs) and pub.batches == 3 and pub.dropped == 0


async def test_status_goes_to_the_channel_and_the_hash(aredis: aioredis.Redis) -> None:
    ps = aredis.pubsub()
    await ps.subscribe(names.status_channel("binance"))
    pub = Publisher(aredis, "binance")
    st = FeedStatus("binance", "stale", "no market data for 5.0s", 123)
    pub.submit_status(st, {"state": "stale", "msgs_bbo": 7})
    await pub.flush()
    [(ch, payload)] = await collect(ps, 1)
    await ps.aclose()
    assert ch == "md:status:binance" and decode(payload) == st
    assert await aredis.hgetall(names.status_key("binance")) == {b"state": b"stale", b"msgs_bbo": b"7"}


async def test_run_loop_publishes_without_being_awaited(aredis: aioredis.Redis) -> None:
    pub = Publisher(aredis, "okx")
    task = asyncio.create_task(pub.run())
    try:
        for i in range(1, 501):
            pub.submit([bbo("100", i)])  # synchronous: the reader never waits for Redis
            if i % 50 == 0:
                await asyncio.sleep(0)
        for _ in range(200):
            if pub.published == 500:
                break
            await asyncio.sleep(0.01)
        assert pub.published == 500
        assert pub.batches < 500  # batched
        assert decode(await aredis.get(names.md_last_key("bbo", "okx", "BTCUSDT"))).seq == 500  # type: ignore[union-attr]
    finally:
        task.cancel()


async def test_overflow_drops_oldest_and_redis_failure_does_not_raise(redis_url: str) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    pub = Publisher(dead, "okx", max_pending=100)
    pub.submit([bbo("100", i) for i in range(1, 151)])
    assert pub.dropped == 100 and len(pub._pending) == 50
    await pub.flush()  # Redis is unreachable: counted, logged, no exception
    assert pub.errors >= 1 and pub.dropped == 150 and pub.published == 0
    await dead.aclose()
