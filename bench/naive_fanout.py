"""The naive fan-out, the benchmark's baseline: a gateway as a first version typically writes it.

``uvicorn bench.naive_fanout:create_app --factory`` serves ``/health`` and a ``/ws`` speaking enough of the
client protocol for the load clients (token in the query string, ``subscribe`` to ``best_touch`` and
``trades``). For every Redis message, for every subscribed client, it decodes the message, rebuilds and
re-encodes the client's JSON, and ``await``s the send inside the reader loop, so one slow client stalls
everyone. Nothing of it is in the product (``gateway/``), whose fan-out this is compared with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from gateway.realtime.protocol import Spec, parse_spec
from shared import names, tokens
from shared.best_touch import best_touch
from shared.errors import DomainError
from shared.feed_health import FeedHealth
from shared.redis_conn import connect
from shared.schema import BBO, FeedStatus, SchemaError, Trade, decode
from shared.settings import EXCHANGES, Settings, get_settings
from shared.timeutil import now_us


@dataclass(eq=False)
class _Sub:
    spec: Spec
    ws: WebSocket


class NaiveGateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.health = FeedHealth(settings.feeds.stale_after_s)
        self.subs: list[_Sub] = []
        self.quotes: dict[tuple[str, str], bytes] = {}
        self.redis = connect(settings.redis.url)
        self.pubsub = self.redis.pubsub()

    async def run(self) -> None:
        await self.pubsub.subscribe(*[names.status_channel(ex) for ex in EXCHANGES])
        await self.pubsub.psubscribe(names.md_channel("bbo", "*", "*"), names.md_channel("trade", "*", "*"))
        async for msg in self.pubsub.listen():
            if msg["type"] in ("message", "pmessage"):
                ch = msg["channel"]
                await self.dispatch(ch.decode() if isinstance(ch, bytes) else ch, msg["data"])

    async def dispatch(self, channel: str, raw: bytes) -> None:
        kind = channel.split(":")[1]
        if kind == "status":
            status = decode(raw)
            if isinstance(status, FeedStatus):
                self.health.update(status, now_us())
            return
        if kind == "bbo":
            ex, sym = channel.split(":")[2:4]
            self.quotes[(ex, sym)] = raw
        for sub in list(self.subs):
            frame = self._render(sub.spec, raw, kind)
            if frame is not None:
                with contextlib.suppress(Exception):
                    await sub.ws.send_text(frame)

    def _render(self, spec: Spec, raw: bytes, kind: str) -> str | None:
        try:
            msg = decode(raw)  # decoded again for every client
        except SchemaError:
            return None
        if not isinstance(msg, BBO | Trade) or spec.symbol != msg.symbol or \
                (spec.exchange != "all" and spec.exchange != msg.exchange):
            return None
        data: dict[str, Any]
        if isinstance(msg, Trade) and spec.stream == "trades":
            data = {"symbol": msg.symbol, "exchange": msg.exchange, "trade_id": msg.trade_id,
                    "price": float(msg.price), "size": float(msg.size), "side": msg.side,
                    "ts_event_us": msg.ts_event_us, "ts_recv_us": msg.ts_recv_us}
        elif isinstance(msg, BBO) and spec.stream == "best_touch":
            exs = EXCHANGES if spec.exchange == "all" else (spec.exchange,)
            quotes = [q for ex in exs if (r := self.quotes.get((ex, spec.symbol))) and isinstance(q := decode(r), BBO)]
            t = best_touch(spec.symbol, quotes, self.health.live(now_us()))
            data = {"symbol": t.symbol, "exchange": spec.exchange,
                    "bid_px": float(t.bid_px) if t.bid_px is not None else None,
                    "bid_sz": float(t.bid_sz) if t.bid_sz is not None else None,
                    "bid_exchanges": list(t.bid_exchanges),
                    "ask_px": float(t.ask_px) if t.ask_px is not None else None,
                    "ask_sz": float(t.ask_sz) if t.ask_sz is not None else None,
                    "ask_exchanges": list(t.ask_exchanges), "live": list(t.live),
                    "ts_event_us": t.ts_event_us, "ts_recv_us": t.ts_recv_us}
        else:
            return None
        return orjson.dumps({"type": spec.stream, "topic": spec.topic, "data": data}).decode()

    async def serve(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            tokens.verify(ws.query_params.get("token") or "", self.settings.auth.jwt_secret)
        except tokens.TokenError:
            await ws.close(1008, "authentication failed")
            return
        mine: list[_Sub] = []
        try:
            while True:
                msg = orjson.loads(await ws.receive_text())
                try:
                    spec = parse_spec(msg, self.settings, ("best_touch", "trades"))
                except DomainError as e:
                    await ws.send_text(orjson.dumps({"type": "error", "code": e.code, "message": e.message}).decode())
                    continue
                await ws.send_text(orjson.dumps({"type": "ack", "action": "subscribe", **spec.describe()}).decode())
                sub = _Sub(spec, ws)
                mine.append(sub)
                self.subs.append(sub)
        except (WebSocketDisconnect, orjson.JSONDecodeError):
            pass
        finally:
            for sub in mine:
                self.subs.remove(sub)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    naive = NaiveGateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reader = asyncio.create_task(naive.run())
        try:
            yield
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            await naive.redis.aclose()

    app = FastAPI(lifespan=lifespan)
    app.add_api_route("/health", lambda: {"status": "ok"})
    app.add_api_websocket_route("/ws", naive.serve)
    return app
