"""WebSocket abuse against ``python -m gateway`` as a real process (docs/gateway-ws.md, "Abuse").

Each abuse runs while a well-behaved client receives a trade stream: it must get every trade, in order. The
stopped-client test pauses whole client processes (``tests.ws_sink``) with SIGSTOP while market data flows and
checks that the gateway drops them, that its RSS stays bounded and that the good client misses nothing.
``make soak-ws`` runs that test longer with more stopped clients (``SR_SOAK_WS_*`` below).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shared import tokens
from shared.settings import ROOT
from tests.gateway_proc import GatewayProc, gateway_process
from tests.mdfeed import MdFeed
from tests.servers import redis_client
from tests.wsclient import SECRET, Client, token, ws_client, ws_url

SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT,XRPUSDT,DOGEUSDT"  # config/config.toml's pairs (python -m gateway reads it)
N_STOPPED = int(os.environ.get("SR_SOAK_WS_STOPPED", "1"))  # stopped client processes
SOAK_S = float(os.environ.get("SR_SOAK_WS_SECONDS", "0"))  # keep the feed going this long (0: until dropped)
PAD = "p" * 2000  # trade ids this long make ~2.2 KB frames: the kernel buffers fill within a few thousand trades


async def wait_for(cond: Callable[[], bool], within: float, what: str, every: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(every)


class Observer:
    """A well-behaved client on ``trades:BTCUSDT:all`` and a feed of numbered trades: nothing may be lost."""

    def __init__(self, client: Client, feed: MdFeed) -> None:
        self.client = client
        self.feed = feed
        self.tag = os.urandom(4).hex()  # trades of an earlier observer are not ours
        self.ids: list[int] = []
        self.foreign: list[str] = []
        self.published = 0
        self.closed: BaseException | None = None

    async def read(self) -> None:
        try:
            while True:
                m = await self.client.recv(60)
                if m["type"] == "trades":
                    tag, _, rest = m["data"]["trade_id"].partition(".")
                    if tag == self.tag:
                        self.ids.append(int(rest.split("-", 1)[0]))
                    else:
                        self.foreign.append(m["data"]["trade_id"][:40])
        except BaseException as e:  # noqa: BLE001 - recorded, checked by the test
            self.closed = e

    async def publish(self, n: int, pad: str = "", max_lag: int = 200) -> None:
        """``n`` more trades, never more than ``max_lag`` ahead of what the observer has received."""
        for _ in range(n):
            if self.published - len(self.ids) >= max_lag:
                await wait_for(lambda: self.published - len(self.ids) < max_lag or self.closed is not None, 30,
                               f"the well-behaved client ({len(self.ids)} of {self.published} trades)", 0.005)
                assert self.closed is None, f"the well-behaved client was closed: {self.closed!r}"
            ex = "binance" if self.published % 2 else "okx"
            await self.feed.trade(ex, "BTCUSDT", "64000.1", "0.01", trade_id=f"{self.tag}.{self.published}-{pad}")
            self.published += 1

    async def check(self) -> None:
        await wait_for(lambda: len(self.ids) >= self.published or self.closed is not None, 30, "the observer")
        assert self.closed is None, f"the well-behaved client was closed: {self.closed!r}"
        if self.ids != list(range(self.published)):
            bad = next(i for i, (a, b) in enumerate(zip(self.ids + [-1], range(self.published), strict=False)) if a != b)
            raise AssertionError(f"gap or reordering in the well-behaved client's trades at {bad}: "
                                 f"{self.ids[max(0, bad - 3):bad + 3]} of {self.published}; foreign {self.foreign[:5]}")


@contextlib.asynccontextmanager
async def observed(gw: GatewayProc, aredis: aioredis.Redis, rate: float = 200) -> AsyncIterator[Observer]:
    """An ``Observer`` fed ``rate`` trades/s in the background while the body runs; checked at the end."""
    async with ws_client(gw.url, tok=token("observer")) as c:
        await c.subscribe(stream="trades", symbol="BTCUSDT", exchange="all")
        obs = Observer(c, MdFeed(aredis))
        reader = asyncio.create_task(obs.read())

        stop = asyncio.Event()

        async def feed() -> None:  # the only publisher while it runs: ids are published in order
            while not stop.is_set():
                await obs.publish(10)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 10 / rate)

        feeder = asyncio.create_task(feed())
        try:
            yield obs
        finally:
            stop.set()
            await asyncio.wait_for(feeder, 60)
        try:
            await obs.check()
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader


# -- one gateway process for the single-connection abuses -------------------------------------------

AUTH_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def gw(redis_base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    with gateway_process(redis_base_url, tmp_path_factory.mktemp("gw"),
                         SR_WS__AUTH_TIMEOUT_S=str(AUTH_TIMEOUT_S)) as g:
        yield g


@contextlib.asynccontextmanager
async def raw_ws(gw: GatewayProc, query: str = "", **kw: Any) -> AsyncIterator[ClientConnection]:
    async with connect(ws_url(gw.url) + query, open_timeout=10, close_timeout=2, **kw) as c:
        yield c


async def closed_with(c: ClientConnection, within: float = 10) -> tuple[int, str, list[Any]]:
    """Read until the server closes: (code, reason, the messages received before)."""
    got: list[Any] = []
    with pytest.raises(ConnectionClosed) as e:
        async with asyncio.timeout(within):
            while True:
                got.append(orjson.loads(await c.recv()))
    rcvd = e.value.rcvd
    assert rcvd is not None, "closed without a close frame"
    return rcvd.code, rcvd.reason, got


async def reply(c: ClientConnection, msg: str | bytes | dict[str, Any]) -> dict[str, Any]:
    await c.send(orjson.dumps(msg).decode() if isinstance(msg, dict) else msg)
    async with asyncio.timeout(10):
        while True:
            m: dict[str, Any] = orjson.loads(await c.recv())
            if m["type"] in ("ack", "error", "auth", "pong"):
                return m


async def test_no_auth_silence_is_closed_1008_after_the_timeout(gw: GatewayProc, aredis: aioredis.Redis) -> None:
    async with observed(gw, aredis), raw_ws(gw) as c:
        t0 = time.monotonic()
        code, reason, got = await closed_with(c)
        waited = time.monotonic() - t0
    assert (code, got) == (1008, [])
    assert reason.startswith("authentication required")
    assert waited >= AUTH_TIMEOUT_S * 0.9


def _forged() -> str:
    return tokens.issue("u1", "someone-else-" + "z" * 40, 3600)


BAD_TOKENS = {
    "garbage": ("not-a-jwt", "authentication failed: invalid token"),
    "expired": (tokens.issue("u1", SECRET, 60, now=time.time() - 7200), "authentication failed: token expired"),
    "forged": (_forged(), "authentication failed: invalid token: Signature verification failed"),
    "too long": ("x" * 5000, "authentication failed: malformed token"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_token_in_the_query_is_closed_1008_with_the_reason(gw: GatewayProc, kind: str) -> None:
    tok, reason = BAD_TOKENS[kind]
    async with raw_ws(gw, f"?token={tok}") as c:
        code, why, got = await closed_with(c)
    assert (code, got) == (1008, [])
    assert why.startswith(reason), why


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_token_in_an_auth_message_gets_auth_failed_then_1008(gw: GatewayProc, kind: str) -> None:
    tok, reason = BAD_TOKENS[kind]
    async with raw_ws(gw) as c:
        await c.send(orjson.dumps({"action": "auth", "token": tok, "id": 1}).decode())
        code, why, got = await closed_with(c)
    assert code == 1008 and why.startswith(reason), (code, why)
    assert [(m["type"], m["code"], m["id"]) for m in got] == [("error", "auth_failed", 1)]


async def test_silence_after_auth_keeps_the_connection(gw: GatewayProc, aredis: aioredis.Redis) -> None:
    async with observed(gw, aredis), raw_ws(gw, f"?token={token()}") as c:
        await asyncio.sleep(3 * AUTH_TIMEOUT_S)  # the only way to show nothing happens is to wait
        assert (await reply(c, {"action": "ping", "id": 5}))["type"] == "pong"
        assert (await c.ping()) is not None  # the WebSocket-level ping is answered too


async def test_binary_frames_get_an_error_each_and_the_connection_stays(gw: GatewayProc,
                                                                        aredis: aioredis.Redis) -> None:
    async with observed(gw, aredis), raw_ws(gw, f"?token={token()}") as c:
        for payload in (b"", b"\x00\xff" * 100, orjson.dumps({"action": "ping"})):
            m = await reply(c, payload)
            assert (m["type"], m["code"]) == ("error", "binary_not_supported")
        assert (await reply(c, {"action": "ping"}))["type"] == "pong"
    async with raw_ws(gw) as c:  # before authentication too; the auth timeout still applies
        m = await reply(c, b"\x01")
        assert (m["type"], m["code"]) == ("error", "binary_not_supported")
        assert (await closed_with(c))[0] == 1008


NOT_JSON = ["", "{", "nan", "{'a': 1}", '{"action": "ping"', "\u0000", "\ud7ff" * 10, "[1, 2",
            '{"action": "ping", "action": "ping"}']


async def test_non_json_gets_bad_json_each_and_the_connection_stays(gw: GatewayProc, aredis: aioredis.Redis) -> None:
    async with observed(gw, aredis), raw_ws(gw, f"?token={token()}") as c:
        for text in NOT_JSON:
            m = await reply(c, text)
            assert (m["type"], m["code"]) == ("error", "bad_json"), (text, m)
        for text in ("[]", "1", "1e99999", '"ping"', "null"):
            m = await reply(c, text)
            assert (m["type"], m["code"]) == ("error", "bad_message"), (text, m)
        assert (await reply(c, {"action": "ping"}))["type"] == "pong"


async def test_1mb_frames_are_closed_1009_without_a_memory_spike(gw: GatewayProc, aredis: aioredis.Redis) -> None:
    big = "x" * (1 << 20)
    before = gw.rss_kb()
    async with observed(gw, aredis):
        for i in range(20):  # text and binary, before and after authentication
            query = f"?token={token()}" if i % 2 else ""
            async with raw_ws(gw, query, max_size=None) as c:
                with contextlib.suppress(ConnectionClosed):
                    await c.send(big if i % 4 < 2 else big.encode())
                code, reason, got = await closed_with(c)
                assert code == 1009 and got == [], (code, reason, got)
        async with raw_ws(gw, f"?token={token()}") as c:  # over ws.max_message_bytes, under the server's limit
            await c.send('{"action": "ping", "pad": "' + "x" * 20000 + '"}')
            code, reason, _ = await closed_with(c)
            assert (code, reason) == (1009, "message larger than 16384 bytes")
    growth_mb = (gw.rss_kb() - before) / 1024
    print(f"\n20 x 1 MB frames: RSS {before / 1024:.1f} MB, +{growth_mb:.1f} MB")
    assert growth_mb < 20, growth_mb  # 20 x 1 MB were sent: none of it was buffered whole


def _nth_subscribe(stream: str, i: int) -> dict[str, object]:
    """The i-th of distinct subscriptions (book: 5 symbols x 3 exchanges x 20 depths, then again)."""
    if stream == "ewma":
        return {"stream": "ewma", "symbol": "BTCUSDT", "exchange": "all", "half_life": 1 + i}
    return {"stream": "book", "symbol": ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT")[i % 5],
            "exchange": ("all", "binance", "okx")[i // 5 % 3], "depth": 1 + i // 15 % 20}


@pytest.mark.parametrize("stream", ["ewma", "book"])
async def test_10000_subscribes_as_fast_as_possible(gw: GatewayProc, aredis: aioredis.Redis, stream: str) -> None:
    before = gw.rss_kb()
    async with observed(gw, aredis):
        async with raw_ws(gw, f"?token={token()}") as c:
            async def flood() -> None:
                with contextlib.suppress(ConnectionClosed):
                    for i in range(10_000):
                        await c.send(orjson.dumps({"action": "subscribe", "id": i,
                                                   **_nth_subscribe(stream, i)}).decode())
            sender = asyncio.create_task(flood())
            code, reason, got = await closed_with(c, 30)
            await sender
        assert (code, reason) == (1008, "too many messages")
        replies = [m for m in got if m["type"] in ("ack", "error")]
        # every message read before the close got its reply, in order: 50 acks then too_many_subscriptions
        assert [m["id"] for m in replies] == list(range(len(replies)))
        assert [m["type"] for m in replies[:50]] == ["ack"] * 50
        # (book repeats its subscriptions after 300: a repeat of one of the first 50 is already_subscribed)
        assert {m.get("code") for m in replies[50:]} - {"already_subscribed"} == {"too_many_subscriptions"}
        assert 200 <= len(replies) < 10_000  # the rate limit's burst is 2 s worth (200), plus its refill
        async with ws_client(gw.url, tok=token()) as other:  # the gateway is fine
            assert (await other.request({"action": "ping"}))["type"] == "pong"
    growth_mb = (gw.rss_kb() - before) / 1024
    print(f"\n10,000 subscribes: {len(replies)} replies before the close, RSS +{growth_mb:.1f} MB")
    assert growth_mb < 20
    await wait_for(lambda: gw.metric("sr_gateway_ws_subscriptions", stream=stream) == 0, 10, f"{stream} released")


# -- a client that stops reading -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sinks(gw: GatewayProc, n: int, rcvbuf: int) -> AsyncIterator[list[tuple[asyncio.subprocess.Process, int]]]:
    """``n`` ``tests.ws_sink`` processes subscribed to everything: (process, its local port)."""
    procs: list[asyncio.subprocess.Process] = []
    out: list[tuple[asyncio.subprocess.Process, int]] = []
    try:
        for i in range(n):
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.ws_sink", "--url", ws_url(gw.url), "--token", token(f"sink{i}"),
                "--symbols", SYMBOLS, "--rcvbuf", str(rcvbuf), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                start_new_session=True)
            procs.append(p)
        for p in procs:
            assert p.stdout is not None
            line = (await asyncio.wait_for(p.stdout.readline(), 60)).decode()
            assert line.startswith("READY "), line
            out.append((p, int(line.split()[1])))
        yield out
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                    p.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 10)


async def test_stopped_client_is_dropped_memory_bounded_others_unaffected(redis_url: str, tmp_path: Path) -> None:
    aredis = redis_client(redis_url)
    queue_max = 500
    env = {"SR_WS__QUEUE_MAX": str(queue_max), "SR_WS__MAX_SUBSCRIPTIONS": "200"}
    try:
        with gateway_process(redis_url, tmp_path, **env) as gw:
            feed = MdFeed(aredis)
            async with feed.heartbeats("binance", "okx"), sinks(gw, N_STOPPED, rcvbuf=0 if SOAK_S else 65536) as ss, \
                    ws_client(gw.url, tok=token("good")) as good:
                await good.subscribe(stream="trades", symbol="BTCUSDT", exchange="all")
                obs = Observer(good, feed)
                reader = asyncio.create_task(obs.read())
                ports = {port for _, port in ss}
                assert ports <= gw.peer_ports()
                await obs.publish(50)  # everything warmed up (klines, ewma, frames) before the baseline
                await obs.check()
                baseline = gw.rss_kb()
                peak = baseline
                for p, _ in ss:
                    os.kill(p.pid, signal.SIGSTOP)

                async def sample() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, gw.rss_kb())
                        await asyncio.sleep(0.05)

                sampler = asyncio.create_task(sample())
                loop = asyncio.get_running_loop()
                start = loop.time()
                dropped_after: float | None = None
                try:
                    while True:
                        connected = ports & gw.peer_ports()
                        if not connected and dropped_after is None:
                            dropped_after = loop.time() - start
                        if not connected and loop.time() - start >= SOAK_S:
                            break
                        assert loop.time() - start < max(90, SOAK_S + 60), (
                            f"stopped clients still connected: {ports & gw.peer_ports()}, "
                            f"slow closes {gw.metric('sr_gateway_ws_slow_closes_total')}")
                        await obs.publish(100, PAD)
                        for sym in ("ETHUSDT", "SOLUSDT"):  # conflated streams too
                            await feed.bbo("okx", sym, f"{obs.published % 97 + 100}", "1", "300", "2")
                        assert gw.alive()
                    await obs.check()
                finally:
                    sampler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
                    reader.cancel()
                assert gw.metric("sr_gateway_ws_slow_closes_total", code="4008") >= N_STOPPED
                growth_mb = (peak - baseline) / 1024
                bound_mb = 50 + 5 * N_STOPPED
                print(f"\nstopped clients {N_STOPPED}: RSS baseline {baseline / 1024:.1f} MB, peak "
                      f"{peak / 1024:.1f} MB (+{growth_mb:.1f}, bound +{bound_mb}), {obs.published} trades in "
                      f"{loop.time() - start:.1f} s, all stopped clients dropped after {dropped_after:.1f} s")
                assert growth_mb < bound_mb
    finally:
        await aredis.aclose()
