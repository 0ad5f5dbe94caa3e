"""The naive fan-out, kept only as the benchmark's baseline (``[ws] fanout = "naive"``).

What a first version typically does: for every Redis message, for every subscribed client, decode the
message, rebuild and re-encode the client's JSON, and ``await`` the send inside the reader loop, so one
slow client stalls everyone. Serves ``best_touch`` and ``trades`` only.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from gateway.fanout import ClientQueue, RedisHub
from gateway.wsproto import Spec, WsError
from shared import names
from shared.best_touch import best_touch
from shared.feed_health import FeedHealth
from shared.schema import BBO, FeedStatus, SchemaError, Trade, decode
from shared.settings import EXCHANGES, Settings
from shared.timeutil import now_us


class _NaiveSub:
    def __init__(self, md: NaiveMarketData, spec: Spec, queue: ClientQueue) -> None:
        self.md, self.spec, self.queue = md, spec, queue

    async def close(self) -> None:
        if self in self.md.subs:
            self.md.subs.remove(self)
            for ch in self.md.channels(self.spec):
                await self.md.hub.release(ch)


class NaiveMarketData:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = RedisHub(settings.redis.url, self.dispatch)
        self.health = FeedHealth(settings.feeds.stale_after_s)
        self.subs: list[_NaiveSub] = []
        self.quotes: dict[tuple[str, str], bytes] = {}

    async def start(self) -> None:
        await self.hub.start()
        for ex in EXCHANGES:
            await self.hub.acquire(names.status_channel(ex))

    async def stop(self) -> None:
        await self.hub.stop()

    def stats(self) -> dict[str, object]:
        return {"channels": self.hub.channels, "messages": self.hub.messages, "fanout": "naive"}

    @staticmethod
    def channels(spec: Spec) -> list[str]:
        kind = "bbo" if spec.stream == "best_touch" else "trade"
        exs = EXCHANGES if spec.exchange == "all" else (spec.exchange,)
        return [names.md_channel(kind, ex, spec.symbol) for ex in exs]

    async def subscribe(self, spec: Spec, queue: ClientQueue, ack: str) -> _NaiveSub:
        if spec.stream not in ("best_touch", "trades"):
            raise WsError("unknown_stream", "the naive fan-out serves best_touch and trades only")
        for ch in self.channels(spec):
            await self.hub.acquire(ch)
        queue.put_critical(ack)
        sub = _NaiveSub(self, spec, queue)
        self.subs.append(sub)
        return sub

    async def dispatch(self, channel: str, raw: bytes) -> None:
        kind = channel.split(":")[1]
        if kind == "status":
            msg = decode(raw)
            assert isinstance(msg, FeedStatus)
            self.health.update(msg, now_us())
            return
        if kind == "bbo":
            ex, sym = channel.split(":")[2:4]
            self.quotes[(ex, sym)] = raw
        for sub in list(self.subs):
            spec = sub.spec
            frame = self._render(spec, raw, kind)
            if frame is not None and sub.queue.direct is not None:
                with contextlib.suppress(Exception):
                    await sub.queue.direct(frame)

    def _render(self, spec: Spec, raw: bytes, kind: str) -> str | None:
        try:
            msg = decode(raw)  # decoded again for every client
        except SchemaError:
            return None
        if spec.symbol != msg.symbol or (spec.exchange != "all" and spec.exchange != msg.exchange):  # type: ignore[union-attr]
            return None
        data: dict[str, Any]
        if kind == "trade" and spec.stream == "trades":
            assert isinstance(msg, Trade)
            data = {"symbol": msg.symbol, "exchange": msg.exchange, "trade_id": msg.trade_id,
                    "price": float(msg.price), "size": float(msg.size), "side": msg.side,
                    "ts_event_us": msg.ts_event_us, "ts_recv_us": msg.ts_recv_us}
        elif kind == "bbo" and spec.stream == "best_touch":
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
