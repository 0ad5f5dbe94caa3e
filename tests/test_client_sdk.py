"""The Python SDK (``client/``) against the real gateway, a real redis-server and the in-process matcher."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from client import (
    ApiError,
    BestTouch,
    Book,
    Ewma,
    Kline,
    OrderEvent,
    SimpleRouterClient,
    StreamClosed,
    SyncClient,
    Trade,
)
from tests.client_helpers import running_system

PASSWORD = "correct horse battery"


@pytest.fixture
async def base(redis_url: str) -> AsyncIterator[str]:
    async with running_system(redis_url) as url:
        yield url


async def _first(sub, pred, within: float = 10.0):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async for m in sub:
            if pred(m):
                return m
        raise AssertionError("subscription ended")
    return await asyncio.wait_for(go(), within)


def _name() -> str:
    return "u" + uuid.uuid4().hex[:12]


async def _client(base: str) -> SimpleRouterClient:
    c = SimpleRouterClient(base)
    await c.register(_name(), PASSWORD)
    return c


async def test_accounts_info_and_errors(base: str) -> None:
    async with SimpleRouterClient(base) as c:
        name = _name()
        user = await c.register(name, PASSWORD)
        assert user.username == name and c.token
        with pytest.raises(ApiError) as e:
            await c.register(name, PASSWORD)
        assert (e.value.status, e.value.code) == (409, "username_taken")
        assert "already taken" in e.value.detail
        token = await c.login(name.upper(), PASSWORD)
        assert token == c.token
        assert (await c.me()).id == user.id
        with pytest.raises(ApiError) as e:
            await c.login(name, "wrong password")
        assert (e.value.status, e.value.code) == (401, "invalid_credentials")
        info = await c.info()
        assert "BTCUSDT" in info.pairs and info.symbols["BTCUSDT"].tick_size == Decimal("0.01")
        assert isinstance(info.symbols["BTCUSDT"].lot_step, Decimal)
    async with SimpleRouterClient(base) as anon:
        with pytest.raises(ApiError) as e:
            await anon.balance()
        assert (e.value.status, e.value.code) == (401, "not_authenticated")


async def test_rest_trading_round_trip_with_exact_decimals(base: str) -> None:
    c = await _client(base)
    try:
        bal = await c.deposit("USDT", Decimal("10000.1234567"))
        assert bal.total["USDT"] == Decimal("10000.1234567") and bal.available["USDT"] == Decimal("10000.1234567")
        with pytest.raises(ApiError) as e:
            await c.deposit("USDT", "0.00000001")
        assert (e.value.status, e.value.code) == (422, "too_precise")
        with pytest.raises(ApiError) as e:
            await c.deposit("NOPE", 1)
        assert e.value.code == "unknown_asset"

        o = await c.place_order("rest1", "BTCUSDT", "buy", Decimal("0.001"), Decimal("50000.01"))
        assert (o.status, o.price, o.quantity, o.reserved) == ("open", Decimal("50000.01"), Decimal("0.001"),
                                                              Decimal("50.00001"))
        assert (await c.get_order("rest1")).status == "open"
        o = await c.modify_order("rest1", price="49000", quantity="0.002")
        assert (o.price, o.quantity, o.version) == (Decimal("49000"), Decimal("0.002"), 2)
        page = await c.list_orders("open")
        assert [x.token_id for x in page.items] == ["rest1"] and page.total == 1
        o = await c.cancel_order("rest1")
        assert o.status == "cancelled"
        with pytest.raises(ApiError) as e:
            await c.cancel_order("rest1")
        assert (e.value.status, e.value.code) == (409, "order_not_open")
        with pytest.raises(ApiError) as e:
            await c.get_order("missing")
        assert e.value.status == 404
        with pytest.raises(ApiError) as e:
            await c.place_order("bad", "BTCUSDT", "buy", "0.001", "50000.001")
        assert (e.value.status, e.value.code) == (422, "invalid_price")

        # a marketable limit fills at the touch; market and IOC settle within moments
        await c.place_order("fill1", "BTCUSDT", "buy", "0.001", "61000")
        o = await c.wait_order("fill1")
        assert o.status == "filled" and o.filled_quantity == Decimal("0.001") and o.average_price is not None
        assert Decimal("59999") < o.average_price < Decimal("60001")
        await c.place_order("mkt1", "BTCUSDT", "sell", "0.0005", type="market")
        assert (await c.wait_order("mkt1")).status == "filled"
        await c.place_order("ioc1", "BTCUSDT", "buy", "0.0005", "59000", type="ioc")
        assert (await c.wait_order("ioc1")).status == "expired"
        fills = await c.fills()
        assert {f.token_id for f in fills.items} == {"fill1", "mkt1"}
        assert all(isinstance(f.price, Decimal) for f in fills.items)
        bal = await c.balance()
        assert bal.total["BTC"] == Decimal("0.0005") and bal.reserved["USDT"] == 0
    finally:
        await c.aclose()


async def test_stream_several_subscriptions_routed_by_topic(base: str) -> None:
    c = await _client(base)
    try:
        async with c.stream() as ws:
            assert (await ws.ping())["type"] == "pong"
            subs = {
                "bt_all": await ws.subscribe("best_touch", "BTCUSDT", exchange="all"),
                "bt_okx": await ws.best_touch("BTCUSDT", "okx"),
                "tr": await ws.trades("ETHUSDT", "binance"),
                "k1s": await ws.klines("BTCUSDT", "1s", "all"),
                "ewma": await ws.ewma("BTCUSDT", Decimal("0.5"), "okx"),
                "book": await ws.book("BTCUSDT", "all", 5),
            }
            assert subs["ewma"].topic == "ewma:BTCUSDT:okx:0.5"
            assert sorted(await ws.list()) == sorted(s.topic for s in subs.values())
            got = {k: await s.next(10) for k, s in subs.items()}
            assert isinstance(got["bt_all"], BestTouch) and got["bt_all"].snapshot
            both = await _first(subs["bt_all"], lambda m: set(m.live) == {"binance", "okx"})
            assert isinstance(both.bid_px, Decimal) and both.bid_exchange in ("binance", "okx")
            okx = await _first(subs["bt_okx"], lambda m: m.bid_px is not None)
            assert okx.exchange == "okx" and okx.bid_exchange == "okx"
            assert isinstance(got["tr"], Trade) and got["tr"].symbol == "ETHUSDT" and got["tr"].exchange == "binance"
            assert isinstance(got["k1s"], Kline) and got["k1s"].interval == "1s"
            assert isinstance(got["ewma"], Ewma) and got["ewma"].half_life == Decimal("0.5")
            assert isinstance(got["book"], Book) and got["book"].topic == "book:BTCUSDT:all:5" and got["book"].snapshot
            merged = await _first(subs["book"], lambda m: set(m.live) == {"binance", "okx"} and len(m.bids) == 5)
            assert all(isinstance(lv.price, Decimal) and lv.size == sum(lv.sizes.values()) for lv in merged.bids)
            assert [lv.price for lv in merged.bids] == sorted((lv.price for lv in merged.bids), reverse=True)
            assert all(m.topic == subs[k].topic for k, m in got.items())

            await subs["tr"].unsubscribe()
            assert subs["tr"].topic is None
            async for _ in subs["tr"]:
                pytest.fail("an unsubscribed subscription ends")
            n = 0
            async for t in ws.trades("BTCUSDT"):  # subscribes on the first step
                assert t.symbol == "BTCUSDT"
                n += 1
                if n == 3:
                    break

            with pytest.raises(ApiError) as e:
                await ws.best_touch("FOOUSDT")
            assert e.value.code == "unknown_symbol" and e.value.status is None
            with pytest.raises(ApiError) as e:
                await ws.klines("BTCUSDT", "2h")
            assert e.value.code == "unknown_interval"
            with pytest.raises(ApiError) as e:
                await ws.best_touch("BTCUSDT", "all")
            assert e.value.code == "already_subscribed"
    finally:
        await c.aclose()


async def test_stream_without_token_is_closed_and_reported(base: str) -> None:
    async with SimpleRouterClient(base) as anon:
        async with anon.stream() as ws:
            with pytest.raises((ApiError, StreamClosed)):
                await ws.best_touch("BTCUSDT")


async def test_ws_order_actions_and_orders_stream(base: str) -> None:
    c = await _client(base)
    try:
        await c.deposit("USDT", 1000)
        async with c.stream() as ws:
            events = await ws.orders()
            o = await ws.place_order("ws1", "BTCUSDT", "buy", "0.001", "50000")
            assert o.status == "open" and o.price == Decimal("50000")
            ev = await events.next(10)
            assert isinstance(ev, OrderEvent) and (ev.event, ev.order.token_id) == ("accepted", "ws1")
            o = await ws.modify_order("ws1", price="50000.5")
            assert o.price == Decimal("50000.5")
            assert (await events.next(10)).event == "modified"
            assert (await ws.cancel_order("ws1")).status == "cancelled"
            assert (await events.next(10)).event == "cancelled"
            with pytest.raises(ApiError) as e:
                await ws.cancel_order("ws1")
            assert e.value.code == "order_not_open"
            await ws.place_order("ws2", "BTCUSDT", "buy", "0.001", "61000")
            seen = [(await events.next(10)).event for _ in range(2)]
            assert seen == ["accepted", "filled"]
    finally:
        await c.aclose()


def _sync_flow(base: str) -> tuple[str, Decimal, str, int]:
    with SyncClient(base) as c:
        c.register(_name(), PASSWORD)
        bal = c.deposit("USDT", "500.5")
        o = c.place_order("s1", "BTCUSDT", "buy", "0.001", "50000")
        c.cancel_order("s1")
        with c.stream() as ws:
            touches = list(ws.best_touch("BTCUSDT", count=2))
            sub = ws.trades("ETHUSDT", "okx")
            trade = sub.next(10)
        return o.status, bal.total["USDT"], trade.exchange, len(touches)


async def test_sync_client(base: str) -> None:
    # the gateway runs on this test's loop: the blocking client must run on another thread
    status, usdt, ex, n = await asyncio.to_thread(_sync_flow, base)
    assert (status, usdt, ex, n) == ("open", Decimal("500.5"), "okx", 2)


def test_a_resync_push_is_its_own_message() -> None:
    from client import Resync
    from client.models import parse_push

    msg = {"type": "resync", "topic": "orders", "data": {"reason": "re-read GET /orders?status=open"}}
    ev = parse_push(msg)
    assert isinstance(ev, Resync) and ev.topic == "orders" and "GET /orders" in ev.reason


async def test_logout_password_and_api_keys(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from client import ApiKey

    name = _name()
    async with SimpleRouterClient(base) as c:
        await c.register(name, PASSWORD)
        await c.deposit("USDT", 1000)
        trade = await c.create_api_key("bot", ["trade"])
        read = await c.create_api_key("watcher", expires_in_s=3600)
        assert isinstance(trade, ApiKey) and trade.key and trade.scopes == ("trade",)
        assert read.scopes == ("read",) and read.expires_us is not None
        listed = await c.api_keys()
        assert [k.name for k in listed] == ["bot", "watcher"] and all(k.key is None for k in listed)

        monkeypatch.setenv("SR_API_KEY", trade.key)
        async with SimpleRouterClient.from_env(base) as bot:
            assert (await bot.me()).username == name
            assert (await bot.place_order("key1", "BTCUSDT", "buy", "0.001", "50000")).status == "open"
            async with bot.stream() as ws:
                assert (await ws.cancel_order("key1")).status == "cancelled"
        async with SimpleRouterClient(base, api_key=read.key) as watcher:
            with pytest.raises(ApiError) as e:
                await watcher.place_order("key2", "BTCUSDT", "buy", "0.001", "50000")
            assert (e.value.status, e.value.code) == (403, "insufficient_scope")
            async with watcher.stream() as ws:
                with pytest.raises(ApiError) as e:
                    await ws.place_order("key2", "BTCUSDT", "buy", "0.001", "50000")
                assert e.value.code == "insufficient_scope"
                await c.delete_api_key(read.id)
                closed = await asyncio.wait_for(ws.wait_closed(), 10)
                assert (closed.code, closed.reason) == (4001, "API key deleted")
                with pytest.raises(StreamClosed):
                    await ws.ping()

        old = c.token
        new = await c.change_password(PASSWORD, "another password")
        assert new != old and (await c.me()).username == name
        async with SimpleRouterClient(base, token=old) as stale:
            with pytest.raises(ApiError) as e:
                await stale.me()
            assert (e.value.status, e.value.code) == (401, "invalid_token")
        await c.logout()
        assert c.token is None
        async with SimpleRouterClient(base, token=new) as stale:
            with pytest.raises(ApiError) as e:
                await stale.me()
            assert e.value.status == 401


async def test_cli_keys_and_an_api_key_from_the_environment(base: str) -> None:
    import os
    import sys

    name = _name()
    env = {**os.environ, "SR_USER": name, "SR_PASSWORD": PASSWORD}
    env.pop("SR_API_KEY", None)

    async def cli(*args: str, **extra: str) -> tuple[int, str]:
        p = await asyncio.create_subprocess_exec(sys.executable, "-m", "client", *args, "--url", base,
                                                 env={**env, **extra}, stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(p.communicate(), 60)
        return p.returncode or 0, out.decode()

    code, out = await cli("keys", "create", "cli-bot", "--scope", "read", "--register")
    assert code == 0, out
    key = out.strip().splitlines()[-1]
    assert key.startswith("srk_")
    code, out = await cli("balance", "--count", "1", SR_API_KEY=key, SR_USER="", SR_PASSWORD="")
    assert code == 0 and "available" in out, out
    code, out = await cli("keys", "list")
    assert code == 0 and "cli-bot" in out and key not in out, out
    kid = next(line.split()[0] for line in out.splitlines() if "cli-bot" in line)
    code, out = await cli("keys", "delete", kid)
    assert code == 0, out
    code, out = await cli("balance", "--count", "1", SR_API_KEY=key)
    assert code == 1 and "401 invalid_token" in out, out
    code, out = await cli("password", "--new-password", "new password 2")
    assert code == 0 and "revoked" in out, out
    code, out = await cli("balance", "--count", "1", SR_PASSWORD="new password 2")
    assert code == 0, out
