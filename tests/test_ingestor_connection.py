"""The connection supervisor against small WebSocket servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from ingestor.connection import Backoff, ConnectionSupervisor, Endpoint
from shared.settings import FeedSettings
from tests.ingestor_helpers import ScriptedServer, scripted_server, wait_for

FAST = FeedSettings(stale_after_s=0.5, idle_timeout_s=0.4, backoff_initial_s=0.05, backoff_max_s=0.4,
                    stable_after_s=0.3)


class Recorder:
    def __init__(self, redial_on: str | None = None) -> None:
        self.frames: list[str | bytes] = []
        self.states: list[tuple[str, str]] = []
        self.redial_on = redial_on

    def on_frame(self, frame: str | bytes, recv_us: int) -> str | None:
        assert recv_us > 0
        self.frames.append(frame)
        return "asked" if frame == self.redial_on else None

    def on_state(self, state: str, reason: str) -> None:
        self.states.append((state, reason))


@contextlib.asynccontextmanager
async def running(sup: ConnectionSupervisor) -> AsyncIterator[ConnectionSupervisor]:
    task = asyncio.create_task(sup.run())
    try:
        yield sup
    finally:
        sup.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        assert task.done()


def make(srv: ScriptedServer | str, rec: Recorder, feeds: FeedSettings = FAST, **kw: Any) -> ConnectionSupervisor:
    url = srv if isinstance(srv, str) else srv.url
    return ConnectionSupervisor("test", Endpoint(url, **kw), rec.on_frame, feeds, on_state=rec.on_state,
                                rng=random.Random(1))


def test_backoff_doubles_with_jitter_caps_and_resets() -> None:
    b = Backoff(0.5, 4.0, random.Random(3))
    delays = [b.next_delay() for _ in range(6)]
    for d, nominal in zip(delays, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert nominal / 2 <= d <= nominal
    assert len(set(delays)) == len(delays)  # jittered
    b.reset()
    assert 0.25 <= b.next_delay() <= 0.5


async def test_reconnects_after_abrupt_drop_and_after_clean_close() -> None:
    async def handler(ws: ServerConnection) -> None:
        n = srv.connections
        await ws.send(f"hello {n}")
        if n == 1:
            ws.transport.abort()  # no close frame: like a dead network
        elif n == 2:
            await ws.close(1001, "going away")
        else:
            await ws.wait_closed()

    rec = Recorder()
    async with scripted_server(handler) as srv, running(make(srv, rec)) as sup:
        await wait_for(lambda: len(rec.frames) >= 3, what="three connections")
        assert rec.frames[:3] == ["hello 1", "hello 2", "hello 3"]
        assert sup.reconnects >= 2 and sup.state == "connected"
    states = [s for s, _ in rec.states]
    assert states[:3] == ["connecting", "connected", "disconnected"]
    assert states.count("connected") >= 3 and states[-1] == "stopped"
    assert any("1001" in r for s, r in rec.states if s == "disconnected")


async def test_backoff_grows_while_failing_and_resets_after_a_stable_connection() -> None:
    async def handler(ws: ServerConnection) -> None:
        if srv.connections <= 3:
            ws.transport.abort()  # short-lived connections: backoff grows
        else:
            await asyncio.sleep(FAST.stable_after_s + 0.2)  # a good one: backoff resets
            await ws.close()

    rec = Recorder()
    async with scripted_server(handler) as srv, running(make(srv, rec)) as sup:
        await wait_for(lambda: srv.connections >= 3, what="three dials")
        assert sup.backoff.attempt >= 2
        await wait_for(lambda: srv.connections >= 5, what="redial after the stable connection")
        assert sup.backoff.attempt <= 1


async def test_connect_failure_is_retried_with_backoff() -> None:
    rec = Recorder()
    async with running(make("ws://127.0.0.1:9", rec)) as sup:  # nothing listens on port 9
        await wait_for(lambda: sup.reconnects >= 3, what="retries")
        assert sup.state in ("connecting", "disconnected")
        assert any("connect failed" in r for _, r in rec.states)


async def test_idle_watchdog_drops_a_silent_connection() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("only frame")
        await ws.wait_closed()  # open but silent, as a dead stream before its close arrives

    rec = Recorder()
    async with scripted_server(handler) as srv, running(make(srv, rec)):
        await wait_for(lambda: srv.connections >= 2, what="redial after idle")
    assert any(r.startswith("idle") for s, r in rec.states if s == "disconnected")


async def test_keepalive_ping_after_silence_keeps_the_connection() -> None:
    pings = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal pings
        async for msg in ws:
            if msg == "ping":
                pings += 1
                await ws.send("pong")

    rec = Recorder()
    async with scripted_server(handler) as srv, running(make(srv, rec, ping_after_s=0.1)) as sup:
        await asyncio.sleep(1.2)  # three times the idle timeout
        assert srv.connections == 1
        assert pings >= 4 and sup.pings_sent == pings
        assert rec.frames.count("pong") >= 4


async def test_missing_pong_leads_to_redial() -> None:
    async def handler(ws: ServerConnection) -> None:
        async for _ in ws:
            pass  # never answers

    rec = Recorder()
    async with scripted_server(handler) as srv, running(make(srv, rec, ping_after_s=0.1)) as sup:
        await wait_for(lambda: srv.connections >= 2, what="redial without pong")
        assert sup.pings_sent >= 1


async def test_exchange_request_redials_at_once_and_resubscribes() -> None:
    subs: list[list[str | bytes]] = []

    async def handler(ws: ServerConnection) -> None:
        got: list[str | bytes] = []
        subs.append(got)
        for _ in range(2):
            got.append(await ws.recv())
        await ws.send("please reconnect" if srv.connections == 1 else "data")
        await ws.wait_closed()

    slow = FeedSettings(stale_after_s=1, idle_timeout_s=5, backoff_initial_s=3, backoff_max_s=5, stable_after_s=5)
    rec = Recorder(redial_on="please reconnect")
    async with scripted_server(handler) as srv:
        sup = make(srv, rec, slow, subscribe=("sub-a", "sub-b"), subscribe_pace_s=0.05)
        async with running(sup):
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await wait_for(lambda: "data" in rec.frames, what="second connection's data")
            assert loop.time() - t0 < 1.5  # no 1.5-3 s backoff: redialled at once
    assert subs[:2] == [["sub-a", "sub-b"], ["sub-a", "sub-b"]]
    assert any("exchange asked" in r for s, r in rec.states if s == "disconnected")


async def test_request_reconnect_from_outside_and_max_lifetime() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("x")
        await ws.wait_closed()

    rec = Recorder()
    feeds = FeedSettings(stale_after_s=1, idle_timeout_s=5, backoff_initial_s=0.05, backoff_max_s=0.1,
                         stable_after_s=5)
    async with scripted_server(handler) as srv, running(make(srv, rec, feeds, max_lifetime_s=0.3)) as sup:
        await wait_for(lambda: srv.connections >= 2, what="redial at end of lifetime")
        assert any("lifetime" in r for s, r in rec.states if s == "disconnected")
        n = srv.connections
        sup.request_reconnect("operator asked")
        await wait_for(lambda: srv.connections > n, what="redial on request")
        assert any("operator asked" in r for s, r in rec.states if s == "disconnected")


async def test_server_pings_are_answered_automatically() -> None:
    answered: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        for _ in range(3):
            pong = await ws.ping()
            answered.append(await asyncio.wait_for(pong, 2))  # latency, as Binance's 20 s pings expect
        await ws.wait_closed()

    rec = Recorder()
    async with scripted_server(handler) as srv, running(make(srv, rec)):
        await wait_for(lambda: len(answered) == 3, what="three pongs")
    assert srv.connections == 1


@pytest.mark.parametrize("payload", [b"\x00binary", "text"])
async def test_binary_and_text_frames_reach_the_handler(payload: str | bytes) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(payload)
        await ws.wait_closed()

    rec = Recorder()
    async with scripted_server(handler) as srv, running(make(srv, rec)):
        await wait_for(lambda: bool(rec.frames), what="frame")
    assert rec.frames[0] == payload


async def test_fragmented_messages_are_put_together_and_close_codes_reported() -> None:
    """A message sent in fragments reaches the handler whole (text as str, binary as bytes); a close with an
    application code (4000) is reported with it."""
    async def handler(ws: ServerConnection) -> None:
        if srv.connections == 1:
            await ws.send(["{\"a\":", "\"dé\"}"])
            await ws.send([b"\x00", b"\x01\x02"])
            await ws.close(4000, "custom")
        else:
            await ws.wait_closed()

    rec = Recorder()
    async with scripted_server(handler) as srv, running(make(srv, rec)):
        await wait_for(lambda: srv.connections >= 2, what="redial after the close")
    assert rec.frames[:2] == ['{"a":"dé"}', b"\x00\x01\x02"]
    assert any("code 4000" in r and "custom" in r for s, r in rec.states if s == "disconnected")


async def test_invalid_utf8_text_ends_the_session_without_reaching_the_handler() -> None:
    async def handler(ws: ServerConnection) -> None:
        if srv.connections == 1:
            from websockets.frames import Frame, Opcode

            ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))  # websockets' send() would refuse it
            ws.send_data()
            await ws.wait_closed()
        else:
            await ws.send("fine")
            await ws.wait_closed()

    rec = Recorder()
    async with scripted_server(handler) as srv, running(make(srv, rec)):
        await wait_for(lambda: "fine" in rec.frames, what="the next connection's frame")
    assert rec.frames == ["fine"]
    assert any("invalid UTF-8" in r for s, r in rec.states if s == "disconnected"), [r for s, r in rec.states if s == "disconnected"]
