"""The consolidated ``book`` stream: the pure merge, and the real /ws (snapshot first, merged by price with the size
per exchange, one venue's book, stale exchanges leaving, depth, validation, conflation for a slow client)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.book_merge import merge_books
from shared.schema import Book
from tests.mdfeed import MdFeed
from tests.servers import run_gateway
from tests.wsclient import token, ws_client

FAST = {"SR_WS__AUTH_TIMEOUT_S": "0.5", "SR_FEEDS__STALE_AFTER_S": "1.5"}
D = Decimal


def book(ex: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]], sym: str = "BTCUSDT") -> Book:
    return Book(ex, sym, tuple((D(p), D(q)) for p, q in bids), tuple((D(p), D(q)) for p, q in asks), 1, 5, 6)


def test_merge_by_price_with_sizes_per_exchange() -> None:
    b = book("binance", [("100.0", "1"), ("99.9", "2"), ("99.8", "3")], [("100.1", "1"), ("100.2", "2")])
    o = book("okx", [("100.0", "0.5"), ("99.85", "4")], [("100.2", "1"), ("100.3", "0")])
    m = merge_books("BTCUSDT", [o, b], ["binance", "okx"], depth=3)
    assert [(lv.price, lv.size, lv.sizes) for lv in m.bids] == [
        (D("100.0"), D("1.5"), (("binance", D(1)), ("okx", D("0.5")))),
        (D("99.9"), D(2), (("binance", D(2)),)),
        (D("99.85"), D(4), (("okx", D(4)),)),
    ]
    assert [(lv.price, lv.size) for lv in m.asks] == [(D("100.1"), D(1)), (D("100.2"), D(3))]  # a 0 size is no level
    assert m.live == ("binance", "okx") and m.ts_recv_us == 6
    only = merge_books("BTCUSDT", [o, b], ["okx"], depth=10)
    assert only.live == ("okx",) and [lv.price for lv in only.bids] == [D("100.0"), D("99.85")]
    assert merge_books("BTCUSDT", [o, b], [], depth=5).bids == ()
    assert merge_books("ETHUSDT", [o, b], ["okx"]).bids == ()
    with pytest.raises(ValueError):
        merge_books("BTCUSDT", [b], ["binance"], depth=0)


def levels(d: dict[str, Any], side: str) -> list[tuple[Any, Any, dict[str, Any]]]:
    return [(lv["price"], lv["size"], lv["sizes"]) for lv in d[side]]


async def test_book_all_snapshot_merge_and_changes(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST) as base, feed.heartbeats("binance", "okx"):
        await feed.book("binance", "BTCUSDT", [("64000.10", "1"), ("64000.00", "2")], [("64000.30", "1.5")])
        await feed.book("okx", "BTCUSDT", [("64000.1", "0.25")], [("64000.2", "3"), ("64000.3", "1")])
        await asyncio.sleep(1.2)  # both heartbeats seen
        async with ws_client(base, tok=token()) as c:
            ack = await c.subscribe(stream="book", symbol="BTCUSDT", exchange="all", depth=2)
            assert ack["subscription"] == "book:BTCUSDT:all:2" and ack["depth"] == 2
            snap = await c.until(lambda m: m["type"] == "book")
            assert snap["snapshot"] is True and snap["topic"] == "book:BTCUSDT:all:2"
            d = snap["data"]
            assert levels(d, "bids") == [(64000.1, 1.25, {"binance": 1, "okx": 0.25}), (64000.0, 2, {"binance": 2})]
            assert levels(d, "asks") == [(64000.2, 3, {"okx": 3}), (64000.3, 2.5, {"binance": 1.5, "okx": 1})]
            assert d["live"] == ["binance", "okx"] and d["crossed"] is False and d["depth"] == 2
            assert '"price":64000.10' in c.raw[-1]  # the exchange's digits
            await feed.book("okx", "BTCUSDT", [("64000.4", "1")], [("64000.5", "1")])
            d = (await c.until(lambda m: m["type"] == "book"))["data"]
            assert levels(d, "bids")[0] == (64000.4, 1, {"okx": 1}) and d["crossed"] is True
            assert "snapshot" not in c.raw[-1]
            # default depth 10, and one venue's book
            await c.subscribe(stream="book", symbol="BTCUSDT", exchange="binance")
            d = (await c.until(lambda m: m["topic"] == "book:BTCUSDT:binance:10"))["data"]
            assert d["live"] == ["binance"] and levels(d, "bids") == [(64000.1, 1, {"binance": 1}),
                                                                      (64000.0, 2, {"binance": 2})]
            r = await c.request({"action": "unsubscribe", "subscription": "book:BTCUSDT:binance:10"})
            assert r["type"] == "ack"


async def test_a_stale_exchange_leaves_the_merged_book(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST) as base, feed.heartbeats("binance", "okx") as alive:
        await feed.book("binance", "SOLUSDT", [("150.1", "1")], [("150.3", "1")])
        await feed.book("okx", "SOLUSDT", [("150.2", "1")], [("150.25", "1")])
        await asyncio.sleep(1.1)
        async with ws_client(base, tok=token()) as c:
            await c.subscribe(stream="book", symbol="SOLUSDT", exchange="all")
            d = (await c.until(lambda m: m["type"] == "book"))["data"]
            assert d["live"] == ["binance", "okx"] and d["bids"][0]["sizes"] == {"okx": 1}
            alive.discard("okx")
            await feed.status("okx", "down", "connection closed")
            d = (await c.until(lambda m: m["type"] == "book" and m["data"]["live"] == ["binance"]))["data"]
            assert [lv["price"] for lv in d["bids"]] == [150.1] and [lv["price"] for lv in d["asks"]] == [150.3]


@pytest.mark.parametrize("depth", [0, 21, -1, 2.5, "10", True, None, [1], 10**30])
async def test_bad_depth_is_refused(redis_url: str, depth: Any) -> None:
    async with run_gateway(redis_url, **FAST) as base, ws_client(base, tok=token()) as c:
        msg: dict[str, Any] = {"action": "subscribe", "stream": "book", "symbol": "BTCUSDT", "exchange": "all",
                               "depth": depth, "id": 3}
        await c.send(json.dumps(msg))  # big integers as a hostile client sends them
        r = await c.until(lambda m: m.get("id") == 3)
        if depth is None:
            assert r["type"] == "ack" and r["subscription"] == "book:BTCUSDT:all:10"
        else:
            assert r["type"] == "error" and r["code"] == "bad_depth" and r["id"] == 3
        for topic in ("book:BTCUSDT:all", "book:BTCUSDT:all:x", "book:BTCUSDT:all:99", "book:BTCUSDT:all:010"):
            r = await c.request({"action": "unsubscribe", "subscription": topic})
            assert r["type"] == "error" and r["code"] == "unknown_topic"


async def test_a_slow_client_gets_the_latest_book(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST) as base, feed.heartbeats("binance", "okx"):
        await asyncio.sleep(1.1)
        async with ws_client(base, tok=token()) as c:
            await c.subscribe(stream="book", symbol="ETHUSDT", exchange="okx", depth=1)
            await c.until(lambda m: m["type"] == "book")
            for i in range(300):
                await feed.book("okx", "ETHUSDT", [(f"{3000 + i}", "1")], [(f"{4000 + i}", "1")], store_last=False)
            d = (await c.until(lambda m: m["type"] == "book" and m["data"]["bids"][0]["price"] == 3299, 10))["data"]
            assert levels(d, "asks") == [(4299, 1, {"okx": 1})]
