"""The batched publisher against the real redis-server fixture."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ingestor.publisher import _EVAL, _SCRIPT, _SHA, Publisher, bulk, resp_call, script_calls
from shared import names
from shared.redis_conn import connect_cluster
from shared.schema import BBO, Book, FeedStatus, Trade, decode
from tests.e2etools import MdSink

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


async def test_a_lingering_batch_gathers_what_arrives_meanwhile(aredis: aioredis.Redis) -> None:
    """With a linger, the run loop waits that long after a first message: what arrives meanwhile goes in the
    same call. (A long linger, so that nothing here depends on the machine's speed.)"""
    pub = Publisher(aredis, "okx", linger_s=3.0)
    task = asyncio.create_task(pub.run())
    try:
        pub.submit([bbo("100", 1)])
        await asyncio.sleep(0.05)
        assert pub.published == 0  # still gathering
        pub.submit([bbo("100", 2), bbo("100", 3)])
        for _ in range(1500):
            if pub.published == 3:
                break
            await asyncio.sleep(0.01)
        assert pub.published == 3 and pub.batches == 1
        assert decode(await aredis.get(names.md_last_key("bbo", "okx", "BTCUSDT"))).seq == 3  # type: ignore[union-attr]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pub.aclose()


async def test_overflow_drops_oldest_and_redis_failure_does_not_raise(redis_url: str) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    pub = Publisher(dead, "okx", max_pending=100)
    pub.submit([bbo("100", i) for i in range(1, 151)])
    assert pub.dropped == 100 and len(pub._pending) == 50
    await pub.flush()  # Redis is unreachable: counted, logged, no exception
    assert pub.errors >= 1 and pub.dropped == 150 and pub.published == 0
    await dead.aclose()


# --- the batch cut into script calls (pure), and on the embedded Redis Cluster -----------------------------------


def test_one_server_one_call_a_cluster_one_call_per_partition() -> None:
    batch = [(b"a", b"1", b"la", b""), (b"t", b"2", None, b""), (b"a", b"3", b"la", b"")]
    [call] = script_calls(batch, "PUBLISH")
    assert call.keys == [b"la"] and call.messages == 3
    assert call.args == ["PUBLISH", 3, 0, b"a", b"1", b"t", b"2", b"a", b"3", b"3"]  # the snapshot: the latest

    batch = [(b"x:{p1}:a", b"1", b"{p1}la", b"x:{p1}"), (b"x:{p2}:b", b"2", None, b"x:{p2}"),
             (b"x:{p1}:a", b"3", b"{p1}la", b"x:{p1}"), (b"x:{p2}:b", b"4", None, b"x:{p2}")]
    one, two = script_calls(batch, "SPUBLISH")
    assert one.keys == [b"x:{p1}", b"{p1}la"]  # routed by its slot's key, then the snapshot keys
    assert one.args == ["SPUBLISH", 2, 1, b"x:{p1}:a", b"1", b"x:{p1}:a", b"3", b"3"]
    assert two.keys == [b"x:{p2}"] and two.args == ["SPUBLISH", 2, 1, b"x:{p2}:b", b"2", b"x:{p2}:b", b"4"]


def test_the_hand_built_call_is_the_bytes_redis_py_would_send() -> None:
    """One server: ``resp_call`` writes the same EVALSHA (or EVAL) that ``script_calls`` describes, byte for byte as
    redis-py packs it."""
    from redis.asyncio.connection import Connection

    pack = Connection().pack_command
    batch = [(b"md:bbo:okx:BTCUSDT", b'{"a":1}', b"md:last:bbo:okx:BTCUSDT", b""), (b"t", b"2" * 300, None, b""),
             (b"md:bbo:okx:BTCUSDT", b"\r\n$3", b"md:last:bbo:okx:BTCUSDT", b""), (b"b", b"", b"lb", b"")]
    [call] = script_calls(batch, "PUBLISH")
    bulks: dict[bytes, bytes] = {}
    for _ in range(2):  # the second time from the cache of bulk strings
        sent = b"".join(resp_call(batch, bulk(b"PUBLISH"), bulks))
        assert sent == b"".join(pack("EVALSHA", _SHA.decode(), len(call.keys), *call.keys, *call.args))
    sent = b"".join(resp_call(batch, bulk(b"PUBLISH"), bulks, _EVAL))
    assert sent == b"".join(pack("EVAL", _SCRIPT, len(call.keys), *call.keys, *call.args))


async def test_a_flushed_script_cache_costs_nothing(aredis: aioredis.Redis) -> None:
    """A server that does not know the script (restarted, SCRIPT FLUSH) gets its source once; nothing is lost."""
    ps = aredis.pubsub()
    await ps.subscribe(names.md_channel("bbo", "okx", "BTCUSDT"))
    pub = Publisher(aredis, "okx")
    try:
        for i in (1, 2):
            await aredis.script_flush()
            pub.submit([bbo("64000.1", i)])
            await pub.flush()
        got = await collect(ps, 2)
        assert [decode(p).seq for _, p in got] == [1, 2]  # type: ignore[union-attr]
        assert pub.published == 2 and pub.errors == 0 and pub.dropped == 0
    finally:
        await ps.aclose()
        await pub.aclose()


async def test_a_script_cannot_spublish_outside_the_masters_slots(cluster_url: str) -> None:
    """Why one call per partition: a script routed to one master that SPUBLISHes to a channel another master owns
    fails (a channel counts as a key of its slot)."""
    rc = connect_cluster(cluster_url)
    try:
        await rc.initialize()
        ks = names.Keyspace(cluster=True)
        here, there = (ks.md_channel("bbo", "okx", s) for s in ("BTCUSDT", "ETHUSDT"))
        assert rc.get_node_from_key(here) != rc.get_node_from_key(there)
        script = "return redis.call('SPUBLISH', ARGV[1], 'x')"
        assert await rc.eval(script, 1, ks.slot_key(here), here) == 0
        with pytest.raises(ResponseError, match="non local key"):
            await rc.eval(script, 1, ks.slot_key(here), there)
    finally:
        await rc.aclose()


async def test_a_batch_over_many_partitions_on_a_cluster(cluster_url: str) -> None:
    """One batch of 40 pairs (15 of the 16 partitions, on every master): every message on its channel in order, the latest
    bbo/book of each pair in its snapshot key, no trade snapshot, the status on its own partition and in the hash."""
    ks = names.Keyspace(cluster=True, partitions=16)
    symbols = [f"P{i}USDT" for i in range(40)]
    rc = connect_cluster(cluster_url)
    await rc.initialize()
    assert len({ks.tag(s) for s in symbols}) >= 12
    assert len({rc.get_node_from_key(ks.md_channel("bbo", "okx", s)).name for s in symbols}) == 3  # type: ignore[union-attr]
    msgs: list[BBO | Book | Trade] = []
    for i in range(1, 4):
        for s in symbols:
            msgs.append(bbo(f"{100 + i}", i, s))
            msgs.append(Trade("okx", s, f"{s}-{i}", D(100 + i), D("0.5"), "buy", i, i))
    msgs += [Book("okx", s, ((D("99"), D("1")),), ((D("101"), D("2")),), 9, 1, 2) for s in symbols[:5]]
    channels = sorted({ks.md_channel(m.type, "okx", m.symbol) for m in msgs} | {ks.status_channel("okx")})
    pub = Publisher(rc, "okx", keyspace=ks)
    st = FeedStatus("okx", "up", "receiving market data", 123)
    try:
        async with MdSink.open(cluster_url, cluster=True, channels=channels) as sink:
            pub.submit(msgs)
            pub.submit_status(st, {"state": "up"})
            await pub.flush()
            await sink.wait(lambda c, m: len(sink.items) == len(msgs) + 1, 10)
        assert pub.published == len(msgs) + 1 and pub.batches == 1 and pub.errors == 0
        by_channel: dict[str, list[object]] = {}
        for ch, m in sink.items:
            by_channel.setdefault(ch, []).append(m)

        def channel_of(m: BBO | Book | Trade | FeedStatus) -> str:
            return ks.status_channel("okx") if isinstance(m, FeedStatus) else ks.md_channel(m.type, "okx", m.symbol)

        for ch in channels:
            assert by_channel[ch] == [m for m in [*msgs, st] if channel_of(m) == ch]
        keys = [ks.md_last_key(kind, "okx", s) for s in symbols for kind in ("bbo", "book", "trade")]
        snaps = dict(zip(keys, await rc.mget_nonatomic(keys), strict=True))
        for s in symbols:
            assert decode(snaps[ks.md_last_key("bbo", "okx", s)]) == bbo("103", 3, s)
            assert snaps[ks.md_last_key("trade", "okx", s)] is None
        assert [decode(snaps[ks.md_last_key("book", "okx", s)]) for s in symbols[:5]] == msgs[-5:]
        assert await rc.hgetall(names.status_key("okx")) == {b"state": b"up"}
    finally:
        await rc.aclose()
