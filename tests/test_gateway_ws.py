"""The client WebSocket over real connections: a real gateway (uvicorn), real Redis, real clients."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from websockets.exceptions import ConnectionClosed

from tests.mdfeed import MdFeed, keyspace_of
from tests.servers import run_gateway
from tests.wsclient import Client, RawClient, token, ws_client

S = 1_000_000
FAST = {"SR_WS__AUTH_TIMEOUT_S": "0.5", "SR_FEEDS__STALE_AFTER_S": "1.5"}


async def closed_with(c: Client, within: float = 5.0) -> tuple[int | None, str]:
    """Read until the server closes; the close code and reason."""
    try:
        while True:
            await asyncio.wait_for(c.conn.recv(), within)
    except ConnectionClosed as e:
        rcvd = e.rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (None, "")


# -- authentication ----------------------------------------------------------------------------------


async def test_three_ways_to_authenticate(redis_url: str) -> None:
    async with run_gateway(redis_url, **FAST) as base:
        async with ws_client(base, tok=token("alice")) as c:
            assert (await c.request({"action": "ping", "id": "a"}))["type"] == "pong"
            assert (await c.request({"action": "list"}))["subscriptions"] == []
        async with ws_client(base, tok=token("bob"), query=False) as c:
            assert (await c.request({"action": "list", "id": 7})) == {
                "type": "ack", "id": 7, "action": "list", "subscriptions": []}
        async with ws_client(base) as c:
            reply = await c.request({"action": "auth", "token": token("carol"), "id": 1})
            assert reply == {"type": "auth", "id": 1, "status": "ok", "user_id": "carol"}
            assert (await c.request({"action": "list"}))["type"] == "ack"


@pytest.mark.parametrize("how", ["query", "header", "message"])
async def test_bad_token_closes_1008(redis_url: str, how: str) -> None:
    bad = token("x")[:-3] + "abc"
    async with run_gateway(redis_url, **FAST) as base:
        if how == "message":
            async with ws_client(base) as c:
                await c.send({"action": "auth", "token": bad})
                assert (await c.recv())["code"] == "auth_failed"
                code, reason = await closed_with(c)
        else:
            async with ws_client(base, tok=bad, query=how == "query") as c:
                code, reason = await closed_with(c)
    assert code == 1008 and "authentication failed" in reason


async def test_no_auth_in_time_closes_1008_and_other_actions_wait_for_auth(redis_url: str) -> None:
    async with run_gateway(redis_url, **FAST) as base, ws_client(base) as c:
        reply = await c.request({"action": "subscribe", "stream": "trades", "symbol": "BTCUSDT", "exchange": "all"})
        assert reply["code"] == "not_authenticated"
        assert (await c.request({"action": "ping"}))["type"] == "pong"
        t0 = time.monotonic()
        code, reason = await closed_with(c)
        assert code == 1008 and "authentication required" in reason and time.monotonic() - t0 < 3


async def test_expired_token_is_refused(redis_url: str) -> None:
    from shared import tokens
    from tests.wsclient import SECRET

    old = tokens.issue("u", SECRET, 60, now=time.time() - 3600)
    async with run_gateway(redis_url, **FAST) as base, ws_client(base, tok=old) as c:
        code, reason = await closed_with(c)
    assert code == 1008 and "expired" in reason


# -- errors --------------------------------------------------------------------------------------------

SUB = {"action": "subscribe", "symbol": "BTCUSDT", "exchange": "all"}


@pytest.mark.parametrize(("payload", "code"), [
    ("{not json", "bad_json"),
    ("[1, 2]", "bad_message"),
    ('"subscribe"', "bad_message"),
    ({"id": 5}, "unknown_action"),
    ({"action": "fly", "id": 5}, "unknown_action"),
    ({"action": 3}, "unknown_action"),
    ({"action": "ping", "id": {"nested": 1}}, "bad_id"),
    ({**SUB, "stream": "candles"}, "unknown_stream"),
    ({**SUB}, "unknown_stream"),
    ({**SUB, "stream": "trades", "symbol": "FOOUSDT"}, "unknown_symbol"),
    ({**SUB, "stream": "trades", "symbol": "btcusdt"}, "unknown_symbol"),
    ({**SUB, "stream": "trades", "exchange": "kraken"}, "unknown_exchange"),
    ({"action": "subscribe", "stream": "trades", "symbol": "BTCUSDT"}, "unknown_exchange"),
    ({**SUB, "stream": "klines", "interval": "2m"}, "unknown_interval"),
    ({**SUB, "stream": "klines"}, "unknown_interval"),
    ({**SUB, "stream": "ewma"}, "bad_half_life"),
    ({**SUB, "stream": "ewma", "half_life": 0}, "bad_half_life"),
    ({**SUB, "stream": "ewma", "half_life": -5}, "bad_half_life"),
    ({**SUB, "stream": "ewma", "half_life": "30"}, "bad_half_life"),
    ({**SUB, "stream": "ewma", "half_life": True}, "bad_half_life"),
    ({**SUB, "stream": "ewma", "half_life": 1e400}, "bad_half_life"),
    ({**SUB, "stream": "ewma", "half_life": None}, "bad_half_life"),
    ({"action": "unsubscribe", "stream": "trades", "symbol": "BTCUSDT", "exchange": "all"}, "not_subscribed"),
    ({"action": "unsubscribe", "topic": "trades:NOPE:all"}, "unknown_topic"),
    ({"action": "unsubscribe", "topic": 12}, "unknown_topic"),
])
async def test_bad_requests_get_one_clear_error(redis_url: str, payload: Any, code: str) -> None:
    async with run_gateway(redis_url, **FAST) as base, ws_client(base, tok=token()) as c:
        text = payload if isinstance(payload, str) else orjson.dumps(payload).decode().replace("1e+400", "1e400")
        await c.send(text)
        reply = await c.recv()
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert reply["message"]
        if isinstance(payload, dict) and isinstance(payload.get("id"), int):
            assert reply["id"] == payload["id"]
        # the connection is still fine, and that was the only reply
        assert (await c.request({"action": "ping", "id": "next"}))["id"] == "next"


async def test_binary_duplicate_limit_oversize_and_others_unaffected(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    env = {**FAST, "SR_WS__MAX_SUBSCRIPTIONS": "2", "SR_WS__MAX_MESSAGE_BYTES": "1000"}
    async with run_gateway(redis_url, **env) as base, ws_client(base, tok=token()) as bystander:
        await bystander.subscribe(stream="trades", symbol="BTCUSDT", exchange="all")
        async with ws_client(base, tok=token()) as c:
            await c.send(b'{"action": "ping"}')
            assert (await c.recv())["code"] == "binary_not_supported"
            await c.subscribe(stream="trades", symbol="BTCUSDT", exchange="all", id=1)
            dup = await c.request({**SUB, "stream": "trades", "id": 2})
            assert dup["code"] == "already_subscribed" and dup["id"] == 2
            await c.subscribe(stream="trades", symbol="ETHUSDT", exchange="okx")
            third = await c.request({**SUB, "stream": "trades", "symbol": "SOLUSDT"})
            assert third["code"] == "too_many_subscriptions"
            await c.send(orjson.dumps({"action": "ping", "pad": "x" * 2000}).decode())
            code, reason = await closed_with(c)
            assert code == 1009 and "larger than" in reason
        await feed.trade("binance", "BTCUSDT", "1.5", "2")
        got = await bystander.until(lambda m: m["type"] == "trades")
        assert got["data"]["price"] == 1.5


async def test_message_flood_is_closed(redis_url: str) -> None:
    async with run_gateway(redis_url, **FAST, SR_WS__RATE_PER_S="5") as base, ws_client(base, tok=token()) as c:
        for _ in range(30):
            await c.send({"action": "ping"})
        code, reason = await closed_with(c)
    assert code == 1008 and "too many" in reason


async def test_unsubscribe_by_fields_or_topic_and_list(redis_url: str, aredis: aioredis.Redis) -> None:
    async with run_gateway(redis_url, **FAST) as base, ws_client(base, tok=token()) as c:
        a = await c.subscribe(stream="ewma", symbol="SOLUSDT", half_life=30, exchange="all")
        assert a["subscription"] == "ewma:SOLUSDT:all:30" and a["half_life"] == 30
        b = await c.subscribe(stream="klines", symbol="ETHUSDT", interval="1m", exchange="binance")
        assert b["subscription"] == "klines:ETHUSDT:binance:1m"
        assert (await c.request({"action": "list"}))["subscriptions"] == [a["subscription"], b["subscription"]]
        r = await c.request({"action": "unsubscribe", "topic": a["subscription"], "id": 3})
        assert r == {"type": "ack", "id": 3, "action": "unsubscribe", "subscription": a["subscription"]}
        r = await c.request({"action": "unsubscribe", "stream": "klines", "symbol": "ETHUSDT", "interval": "1m",
                             "exchange": "binance"})
        assert r["type"] == "ack"
        assert (await c.request({"action": "list"}))["subscriptions"] == []


# -- best touch ----------------------------------------------------------------------------------------


async def test_best_touch_all_aggregates_names_ties_and_keeps_digits(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST) as base, feed.heartbeats("binance", "okx"):
        # stored before anyone subscribes: the snapshot comes from md:last:bbo:*
        await feed.bbo("binance", "BTCUSDT", "64000.10", "1.50", "64000.30", "0.00000001", ts_event_us=111, ts_recv_us=222)
        await feed.bbo("okx", "BTCUSDT", "64000.20", "2", "64000.30", "3")
        await asyncio.sleep(1.2)  # both heartbeats seen
        async with ws_client(base, tok=token()) as c:
            await c.subscribe(stream="best_touch", symbol="BTCUSDT", exchange="all")
            snap = await c.until(lambda m: m["type"] == "best_touch")
            assert snap["snapshot"] is True and snap["topic"] == "best_touch:BTCUSDT:all"
            d = snap["data"]
            assert d["bid_px"] == 64000.2 and d["bid_exchanges"] == ["okx"] and d["bid_exchange"] == "okx"
            assert d["ask_px"] == 64000.3 and d["ask_sz"] == 3.00000001
            assert d["ask_exchanges"] == ["okx", "binance"]  # a tie names both, larger size first
            assert d["live"] == ["binance", "okx"] and d["crossed"] is False
            assert '"ask_sz":3.00000001' in c.raw[-1] and '"ask_px":64000.30' in c.raw[-1]
            # a change is pushed with the underlying times
            await feed.bbo("binance", "BTCUSDT", "64000.25", "0.7", "64000.40", "1", ts_event_us=5, ts_recv_us=6)
            d = (await c.until(lambda m: m["type"] == "best_touch"))["data"]
            assert (d["bid_px"], d["bid_sz"], d["bid_exchanges"]) == (64000.25, 0.7, ["binance"])
            assert (d["ask_px"], d["ask_exchanges"]) == (64000.3, ["okx"])
            assert d["ts_recv_us"] >= 6 and d["ts_event_us"] > 0
            # crossed across exchanges is reported as is
            await feed.bbo("okx", "BTCUSDT", "64000.50", "1", "64000.60", "1")
            d = (await c.until(lambda m: m["type"] == "best_touch"))["data"]
            assert d["bid_exchanges"] == ["okx"] and d["ask_exchanges"] == ["binance"] and d["crossed"] is True


@pytest.mark.parametrize("exchange", ["binance", "okx"])
async def test_best_touch_single_exchange_filter(redis_url: str, aredis: aioredis.Redis, exchange: str) -> None:
    feed = MdFeed(aredis)
    other = "okx" if exchange == "binance" else "binance"
    async with run_gateway(redis_url, **FAST) as base, feed.heartbeats("binance", "okx"):
        await asyncio.sleep(0.3)
        async with ws_client(base, tok=token()) as c:
            await c.subscribe(stream="best_touch", symbol="ETHUSDT", exchange=exchange)
            await c.until(lambda m: m.get("snapshot") is True)
            await feed.bbo(other, "ETHUSDT", "3000.5", "1", "3000.6", "1")
            await feed.bbo(exchange, "ETHUSDT", "2999.5", "4", "3001", "5")
            d = (await c.until(lambda m: m["type"] == "best_touch"))["data"]
            assert d["exchange"] == exchange and d["live"] == [exchange]
            assert (d["bid_px"], d["bid_sz"], d["ask_px"], d["ask_sz"]) == (2999.5, 4, 3001, 5)
            assert d["bid_exchanges"] == [exchange] == d["ask_exchanges"]


async def test_stale_or_down_exchange_drops_out(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST) as base, feed.heartbeats("binance", "okx") as alive:
        await feed.bbo("binance", "SOLUSDT", "150.10", "1", "150.30", "1")
        await feed.bbo("okx", "SOLUSDT", "150.20", "1", "150.25", "1")
        await asyncio.sleep(1.1)
        async with ws_client(base, tok=token()) as c:
            await c.subscribe(stream="best_touch", symbol="SOLUSDT", exchange="all")
            d = (await c.until(lambda m: m["type"] == "best_touch"))["data"]
            assert d["bid_exchanges"] == ["okx"] and d["live"] == ["binance", "okx"]
            # okx says it is down: left out at once
            alive.discard("okx")
            await feed.status("okx", "down", "connection closed")
            d = (await c.until(lambda m: m["type"] == "best_touch"))["data"]
            assert d["live"] == ["binance"] and d["bid_exchanges"] == ["binance"] and d["ask_px"] == 150.3
            await feed.status("okx", "up")
            d = (await c.until(lambda m: m["type"] == "best_touch"))["data"]
            assert d["live"] == ["binance", "okx"]
            # okx goes silent (a dead ingestor cannot say so): stale after stale_after_s
            t0 = time.monotonic()
            d = (await c.until(lambda m: m["type"] == "best_touch", within=5))["data"]
            assert d["live"] == ["binance"] and d["bid_px"] == 150.1
            assert 1.0 < time.monotonic() - t0 < 4


# -- trades ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", ["all", "binance", "okx"])
async def test_trades_stream_per_exchange_filter(redis_url: str, aredis: aioredis.Redis, exchange: str) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST) as base, ws_client(base, tok=token()) as c:
        await c.subscribe(stream="trades", symbol="XRPUSDT", exchange=exchange)
        sent = [
            await feed.trade("binance", "XRPUSDT", "0.5123", "1000.0", "buy", trade_id="b1", ts_event_us=10, ts_recv_us=20),
            await feed.trade("okx", "XRPUSDT", "0.5124", "12.5", "sell", trade_id="o1", ts_event_us=11, ts_recv_us=21),
            await feed.trade("okx", "ETHUSDT", "3000", "1", "sell"),  # other symbol
            await feed.trade("binance", "XRPUSDT", "0.5122", "3", "sell", trade_id="b2", ts_event_us=12, ts_recv_us=22),
        ]
        want = [t for t in sent if t.symbol == "XRPUSDT" and exchange in ("all", t.exchange)]
        # a pong is no barrier for pub/sub data (Redis may answer PUBLISH before it writes to the gateway's
        # subscription): wait for the last trade, then the pong shows nothing else followed it
        await c.until(lambda m: m["type"] == "trades" and m["data"]["trade_id"] == want[-1].trade_id)
        await c.request({"action": "ping"})
        got = [m for m in (orjson.loads(r) for r in c.raw) if m["type"] == "trades"]
        assert [m["data"]["trade_id"] for m in got] == [t.trade_id for t in want]
        for m, t in zip(got, want, strict=True):
            assert m["topic"] == f"trades:XRPUSDT:{exchange}"
            assert m["data"] == {"symbol": "XRPUSDT", "exchange": t.exchange, "trade_id": t.trade_id,
                                 "price": float(t.price), "size": float(t.size), "side": t.side,
                                 "ts_event_us": t.ts_event_us, "ts_recv_us": t.ts_recv_us}
        if exchange != "okx":
            assert '"price":0.5123,"size":1000.0,' in "".join(c.raw)


# -- klines ------------------------------------------------------------------------------------------------


KLINE_CASES = {
    # (open, high, low, close, volume, trades) for buckets t, t+1 (flat), t+2 (flat), t+3
    "all": [(10, 12, 10, 12, 3, 2), (12, 12, 12, 12, 0, 0), (12, 12, 12, 12, 0, 0), (9, 11, 9, 11, 1.5, 2)],
    "binance": [(10, 10, 10, 10, 1, 1), (10, 10, 10, 10, 0, 0), (10, 10, 10, 10, 0, 0), (9, 9, 9, 9, 0.5, 1)],
    "okx": [(12, 12, 12, 12, 2, 1), (12, 12, 12, 12, 0, 0), (12, 12, 12, 12, 0, 0), (11, 11, 11, 11, 1, 1)],
}


def ohlcvn(d: dict[str, Any]) -> tuple[Any, ...]:
    return (d["open"], d["high"], d["low"], d["close"], d["volume"], d["trades"])


@pytest.mark.parametrize("exchange", ["all", "binance", "okx"])
async def test_klines_history_boundaries_empty_intervals_and_live_candle(
        redis_url: str, aredis: aioredis.Redis, exchange: str) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST) as base:
        t = (time.time_ns() // 1000 // S - 8) * S
        await feed.trade("binance", "DOGEUSDT", "10", "1", ts_event_us=t + 100_000)
        await feed.trade("okx", "DOGEUSDT", "12", "2", ts_event_us=t + 999_999)
        await feed.trade("binance", "DOGEUSDT", "9", "0.5", ts_event_us=t + 3 * S)  # exactly on a boundary
        await feed.trade("okx", "DOGEUSDT", "11", "1", ts_event_us=t + 3 * S + 400_000)
        await asyncio.sleep(0.3)
        async with ws_client(base, tok=token()) as c:
            await c.subscribe(stream="klines", symbol="DOGEUSDT", interval="1s", exchange=exchange)
            hist = []
            while True:
                m = await c.until(lambda m: m["type"] == "klines")
                if not m["data"]["history"]:
                    break
                hist.append(m["data"])
            assert all(h["closed"] for h in hist)
            assert [ohlcvn(h) for h in hist[:4]] == KLINE_CASES[exchange]
            assert [h["open_time_us"] for h in hist[:4]] == [t, t + S, t + 2 * S, t + 3 * S]
            assert hist[0]["close_time_us"] == t + S - 1
            # after t+3 only flat candles at the last close, up to now
            last_close = KLINE_CASES[exchange][3][3]
            assert all(ohlcvn(h) == (last_close,) * 4 + (0, 0) for h in hist[4:])
            assert len(hist) >= 6
            # live: the open candle is pushed every second, then once more when closed
            now = time.time_ns() // 1000
            await feed.trade("okx" if exchange == "okx" else "binance", "DOGEUSDT", "13.5", "2", ts_event_us=now)
            bucket = now - now % S
            live = await c.until(lambda m: m["data"]["open_time_us"] == bucket and m["data"]["trades"] == 1, 3)
            # (a 1 s candle is usually closed by the first tick after its trade)
            fin = live if live["data"]["closed"] else await c.until(
                lambda m: m["data"]["open_time_us"] == bucket and m["data"]["closed"], 3)
            assert ohlcvn(fin["data"]) == (13.5, 13.5, 13.5, 13.5, 2, 1) and not fin["data"]["history"]
            assert live["topic"] == f"klines:DOGEUSDT:{exchange}:1s"
            assert fin["data"]["ts_event_us"] == now and fin["data"]["ts_recv_us"] > 0
            # the next second has no trades: a flat candle at 13.5 is pushed while open
            nxt = await c.until(lambda m: m["data"]["open_time_us"] == bucket + S, 3)
            assert ohlcvn(nxt["data"]) == (13.5, 13.5, 13.5, 13.5, 0, 0)


async def test_kline_history_count_is_configurable(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST, SR_WS__KLINE_HISTORY="3") as base:
        await feed.trade("binance", "BTCUSDT", "5", "1", ts_event_us=(time.time_ns() // 1000) - 30 * S)
        await asyncio.sleep(0.2)
        async with ws_client(base, tok=token()) as c:
            await c.subscribe(stream="klines", symbol="BTCUSDT", interval="10s", exchange="binance")
            await c.request({"action": "ping"})
            hist = [m for m in (orjson.loads(r) for r in c.raw) if m["type"] == "klines" and m["data"]["history"]]
            assert len(hist) == 3


# -- ewma --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("exchange", "second"), [("binance", "binance"), ("all", "okx")])
async def test_ewma_values_start_at_subscription(redis_url: str, aredis: aioredis.Redis, exchange: str,
                                                 second: str) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST) as base, ws_client(base, tok=token()) as c:
        await feed.trade("binance", "ETHUSDT", "5000", "1")  # before subscribing: not part of the average
        await c.subscribe(stream="ewma", symbol="ETHUSDT", half_life=1, exchange=exchange)
        t = 1_700_000_000 * S
        if exchange == "binance":
            await feed.trade("okx", "ETHUSDT", "9999", "1", ts_event_us=t)  # filtered out
        await feed.trade("binance", "ETHUSDT", "100", "1", ts_event_us=t)
        first = await c.until(lambda m: m["type"] == "ewma")
        assert first["data"]["value"] == 100 and first["topic"] == f"ewma:ETHUSDT:{exchange}:1"
        await feed.trade(second, "ETHUSDT", "200", "1", ts_event_us=t + S)
        nxt = await c.until(lambda m: m["type"] == "ewma")
        # hand computed: (100 * 0.5 + 200) / (0.5 + 1)
        assert '"value":166.666666666667' in c.raw[-1]
        assert nxt["data"]["ts_event_us"] == t + S and nxt["data"]["half_life"] == 1
        # a second subscription starts its own average
        await c.subscribe(stream="ewma", symbol="ETHUSDT", half_life=2.5, exchange=exchange)
        await feed.trade("binance", "ETHUSDT", "300", "1", ts_event_us=t + 2 * S)
        vals = {}
        while len(vals) < 2:
            m = await c.until(lambda m: m["type"] == "ewma")
            vals[m["topic"]] = m["data"]["value"]
        assert vals[f"ewma:ETHUSDT:{exchange}:2.5"] == 300
        # (250 * 0.5 + 300) / (1.5 * 0.5 + 1) = 242.857142857143
        assert vals[f"ewma:ETHUSDT:{exchange}:1"] == pytest.approx(242.857142857143)


async def test_ewma_same_topic_clients_keep_their_own_start(redis_url: str, aredis: aioredis.Redis) -> None:
    """One shared accumulator per topic: a later subscriber, an unsubscribe and a resubscribe each keep the
    average of their own subscription."""
    feed = MdFeed(aredis)
    sub = {"stream": "ewma", "symbol": "ETHUSDT", "half_life": 1, "exchange": "all"}
    t = 1_700_000_000 * S

    async def value(c: Any) -> Any:
        return (await c.until(lambda m: m["type"] == "ewma"))["data"]["value"]

    async with run_gateway(redis_url, **FAST) as base, ws_client(base, tok=token()) as a, \
            ws_client(base, tok=token()) as b:
        await a.subscribe(**sub)
        await feed.trade("binance", "ETHUSDT", "100", "1", ts_event_us=t)
        assert await value(a) == 100
        await b.subscribe(**sub)
        await feed.trade("okx", "ETHUSDT", "200", "1", ts_event_us=t + S)
        assert await value(a) == pytest.approx(166.666666666667) and await value(b) == 200
        r = await a.request({"action": "unsubscribe", "topic": "ewma:ETHUSDT:all:1"})
        assert r["type"] == "ack"
        await feed.trade("binance", "ETHUSDT", "400", "1", ts_event_us=t + 2 * S)
        assert await value(b) == pytest.approx((200 * 0.5 + 400) / 1.5)
        await a.subscribe(**sub)
        await feed.trade("binance", "ETHUSDT", "50", "1", ts_event_us=t + 3 * S)
        assert await value(a) == 50
        assert await value(b) == pytest.approx(((200 * 0.5 + 400) * 0.5 + 50) / (1.5 * 0.5 + 1))


# -- fan-out -----------------------------------------------------------------------------------------------


async def numsub(r: aioredis.Redis, channel: str) -> int:
    if isinstance(r, RedisCluster):  # sharded channels, counted by the node that owns the slot
        node = r.get_node_from_key(channel)
        return int(dict(await r.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node))[channel.encode()])
    return dict(await r.pubsub_numsub(channel))[channel.encode()]


async def test_one_redis_subscription_per_channel_reference_counted(redis_url: str, aredis: aioredis.Redis) -> None:
    ks = keyspace_of(aredis)
    ch = ks.md_channel("bbo", "okx", "BTCUSDT")
    async with run_gateway(redis_url, **FAST) as base:
        assert await numsub(aredis, ch) == 0
        async with ws_client(base, tok=token()) as a, ws_client(base, tok=token()) as b:
            await a.subscribe(stream="best_touch", symbol="BTCUSDT", exchange="all")
            await b.subscribe(stream="best_touch", symbol="BTCUSDT", exchange="okx")
            assert await numsub(aredis, ch) == 1
            async with run_gateway(redis_url, **FAST) as base2, ws_client(base2, tok=token()) as c:
                await c.subscribe(stream="best_touch", symbol="BTCUSDT", exchange="okx")
                assert await numsub(aredis, ch) == 2  # one per gateway process
            await a.request({"action": "unsubscribe", "topic": "best_touch:BTCUSDT:all"})
            assert await numsub(aredis, ch) == 1
        await asyncio.sleep(0.2)  # the disconnect releases b's subscription
        assert await numsub(aredis, ch) == 0
        # trade channels are held for the process's life (klines are built from start)
        assert await numsub(aredis, ks.md_channel("trade", "okx", "BTCUSDT")) == 1


async def test_two_gateways_give_the_same_results(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, **FAST) as b1, run_gateway(redis_url, **FAST) as b2, \
            ws_client(b1, tok=token()) as c1, ws_client(b2, tok=token()) as c2:
        subs = [{"stream": "trades", "symbol": "SOLUSDT", "exchange": "all"},
                {"stream": "klines", "symbol": "SOLUSDT", "exchange": "all", "interval": "10s"}]
        for c in (c1, c2):
            for s in subs:
                await c.subscribe(**s)
        t = (time.time_ns() // 1000 // (10 * S) - 1) * 10 * S
        for i in range(20):
            last = await feed.trade("okx" if i % 3 else "binance", "SOLUSDT", f"150.{i:02d}", f"0.{i + 1}",
                                    ts_event_us=t + i * 700_000)
        out = []
        for c in (c1, c2):
            # the last trade first: a pong is no barrier for pub/sub data
            await c.until(lambda m: m["type"] == "trades" and m["data"]["trade_id"] == last.trade_id)
            await c.request({"action": "ping"})
            out.append([r for r in c.raw if '"trades"' in r or '"closed":true' in r])
        assert out[0] == out[1] and len(out[0]) >= 20


async def test_slow_trades_client_is_closed_and_others_get_everything(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    n = 3000  # x 4 KB: more than the kernel's socket buffers (4 MB here) plus the queue (500 x 4 KB) hold
    async with run_gateway(redis_url, **FAST, SR_WS__QUEUE_MAX="500") as base, ws_client(base, tok=token()) as fast:
        slow = await RawClient.open(base, token())
        try:
            await slow.send({"action": "subscribe", "stream": "trades", "symbol": "BTCUSDT", "exchange": "all"})
            assert (await slow.json())["type"] == "ack"
            await fast.subscribe(stream="trades", symbol="BTCUSDT", exchange="all")
            got = 0

            async def read_fast() -> None:
                nonlocal got
                while got < n:
                    m = await fast.recv(10)
                    got += m["type"] == "trades"

            reader = asyncio.create_task(read_fast())
            pad = "p" * 4000
            for i in range(n):
                await feed.trade("binance", "BTCUSDT", "1", "1", trade_id=f"{i}-{pad}")
            await asyncio.wait_for(reader, 20)
            assert got == n  # the fast client got every trade while the slow one was stuck
            received = 0
            while True:
                op, data = await slow.frame()
                if op == 8:  # close
                    break
                received += 1
            assert received < n
            code = struct.unpack("!H", data[:2])[0]
            assert code == 4008 and b"too slow" in data[2:]
        finally:
            slow.sock.close()


async def test_slow_best_touch_client_is_conflated_not_closed(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    n = 3000
    async with run_gateway(redis_url, **FAST) as base, feed.heartbeats("binance"), \
            ws_client(base, tok=token()) as fast:
        await asyncio.sleep(0.3)
        slow = await RawClient.open(base, token())
        try:
            for sub in ({"stream": "best_touch", "symbol": "BTCUSDT", "exchange": "binance"},
                        {"stream": "trades", "symbol": "ETHUSDT", "exchange": "okx"}):
                await slow.send({"action": "subscribe", **sub})
                while (await slow.json())["type"] != "ack":
                    pass
            await fast.subscribe(stream="best_touch", symbol="BTCUSDT", exchange="binance")
            # first fill the socket buffers with 8 MB of (big) trades, well under queue_max of them
            for i in range(1000):
                await feed.trade("okx", "ETHUSDT", "1", "1", trade_id=f"{i}-" + "p" * 8000)
            for i in range(n):
                await feed.bbo("binance", "BTCUSDT", f"{60000 + i}.5", "1", f"{60001 + i}.5", "1", store_last=False)
            final = 60000 + n - 1 + 0.5
            seen = 0
            while True:
                m = await fast.until(lambda m: m["type"] == "best_touch", 10)
                seen += 1
                if m["data"]["bid_px"] == final:
                    break
            fast_seen = seen  # a reading client gets (nearly) every change; exactly every one only on an idle machine
            seen = trades = 0
            while True:
                m = await slow.json()
                trades += m["type"] == "trades"
                if m["type"] == "best_touch":
                    seen += 1
                    if m["data"]["bid_px"] == final:
                        break
            assert trades == 1000  # nothing lost
            assert seen < n / 2 < fast_seen  # most touch updates were conflated away; the latest one arrived
            await slow.send({"action": "ping", "id": 1})
            assert (await slow.json())["id"] == 1  # still connected
        finally:
            slow.sock.close()
