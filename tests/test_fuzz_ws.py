"""Hypothesis-generated messages to the real /ws: exactly one reply each (or a clean close with a documented
code), never a server error, and another client keeps receiving its market data throughout."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from tests.fuzzing import fuzz_settings
from tests.mdfeed import MdFeed
from tests.servers import run_gateway
from tests.wsclient import token, ws_client

REPLIES = {"ack", "error", "auth", "pong"}
CLEAN_CLOSES = {1008, 1009}
ACTIONS = ["auth", "ping", "subscribe", "unsubscribe", "list", "place_order", "cancel_order", "get_order",
           "modify_order", "balance"]
STREAMS = ["best_touch", "trades", "klines", "ewma", "book", "orders"]
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
           | st.sampled_from(["BTCUSDT", "ETHUSDT", "all", "binance", "okx", "1m", "1s", "buy", "sell", "limit",
                              "market", "NaN", "-1", "0", "1e999", "0.001", "o1", "ᴮᵀᶜ", "\u0000"]))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                                                        max_size=3), max_leaves=8)
keys = st.sampled_from(["id", "token", "stream", "symbol", "exchange", "interval", "half_life", "depth", "topic", "token_id",
                        "side", "type", "price", "quantity", "asset", "amount"])
shaped = st.builds(lambda action, fields: {"action": action, **fields},
                   action=st.sampled_from(ACTIONS) | scalars,
                   fields=st.dictionaries(keys, values | st.sampled_from(STREAMS), max_size=6))


def as_text(o: Any) -> str:
    return json.dumps(o, ensure_ascii=False)  # big integers and NaN included, as a hostile client may send


def sendable(m: str | bytes) -> bool:
    """A text frame must be UTF-8: a lone surrogate cannot even leave the client."""
    try:
        return isinstance(m, bytes) or bool(m.encode()) or True
    except UnicodeEncodeError:
        return False


messages = (shaped.map(as_text)
            | values.map(as_text)
            | st.text(max_size=200)
            | st.binary(max_size=100)
            | st.sampled_from(["x" * 17_000, '{"action":"ping","id":1,"id":2}', "[" * 5000, '{"action": NaN}',
                               '{"action":"ping","id":"' + "i" * 200 + '"}', "", " "])
            ).filter(sendable)


class Fuzzer:
    def __init__(self, base: str) -> None:
        self.base = base
        self.client: Any = None
        self._cm: Any = None
        self.probe = itertools.count()
        self.closes: list[int] = []

    async def connect(self) -> None:
        self._cm = ws_client(self.base, tok=token("fuzz-ws"))
        self.client = await self._cm.__aenter__()

    async def reset(self) -> None:
        with contextlib.suppress(Exception):
            await self._cm.__aexit__(None, None, None)
        await self.connect()

    async def one(self, text: str | bytes) -> None:
        """Send one message and a ping probe: exactly one reply must come before the probe's pong."""
        probe = f"probe-{next(self.probe)}"
        c = self.client
        try:
            await c.send(text)
            await c.send({"action": "ping", "id": probe})
            replies = []
            while True:
                m = await c.recv(within=10)
                if m.get("type") == "pong" and m.get("id") == probe:
                    break
                if m.get("type") in REPLIES:
                    replies.append(m)
            assert len(replies) == 1, (text[:200], replies)
            if replies[0]["type"] == "error":
                assert isinstance(replies[0]["code"], str) and isinstance(replies[0]["message"], str)
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            assert code in CLEAN_CLOSES, (text[:200], code, e.rcvd and e.rcvd.reason)
            self.closes.append(code)
            await self.reset()


@pytest.mark.asyncio
async def test_fuzzed_ws_messages(redis_url: str, aredis: aioredis.Redis) -> None:
    feed = MdFeed(aredis)
    async with run_gateway(redis_url, SR_WS__RATE_PER_S="100000") as base, \
            ws_client(base, tok=token("observer")) as observer:
        await feed.status("binance")
        assert (await observer.request({"action": "subscribe", "stream": "trades", "symbol": "BTCUSDT",
                                        "exchange": "binance", "id": 1}))["type"] == "ack"
        fuzzer = Fuzzer(base)
        await fuzzer.connect()
        loop = asyncio.get_running_loop()
        examples: list[str | bytes] = []

        @fuzz_settings(300)
        @given(msg=messages)
        def collect(msg: str | bytes) -> None:
            examples.append(msg)

        await loop.run_in_executor(None, collect)  # hypothesis' own loop stays off ours
        received = 0
        for i, msg in enumerate(examples):
            await fuzzer.one(msg)
            if i % 50 == 0:  # the other client is still served
                await feed.trade("binance", "BTCUSDT", "100.5", "0.1")
                m = await observer.until(lambda m: m.get("type") == "trades", 10)
                assert m["data"]["price"] == 100.5
                received += 1
        assert received >= 1 and len(examples) >= 100, (received, len(examples))
        print(f"ws fuzz: {len(examples)} messages, closes {fuzzer.closes}")
        with contextlib.suppress(Exception):
            await fuzzer._cm.__aexit__(None, None, None)
