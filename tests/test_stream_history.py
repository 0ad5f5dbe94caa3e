"""The kline history a new subscriber gets is built as candles close (``MarketData._history``): it must stay the
frames of the builder's closed candles, in order, whatever closed them (a trade, the ticker, a subscription), across
gaps longer than the history and once the history is full. In-process: no Redis, no sockets."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from gateway.realtime import messages
from gateway.realtime.frames import payload_of
from gateway.realtime.protocol import Spec
from gateway.realtime.queue import ClientQueue
from gateway.realtime.streams import MarketData
from shared.schema import Trade, encode
from shared.settings import load_settings
from shared.timeutil import now_us

S = 1_000_000


class _Hub:
    async def acquire(self, channel: str) -> bool:
        return False

    async def release(self, channel: str) -> bool:
        return False


def _trade(n: int, ts: int, exchange: str = "binance") -> bytes:
    return encode(Trade(exchange, "BTCUSDT", str(n), Decimal("64000.1") + n % 5, Decimal("0.5"), "buy", ts, ts))


def _expected(md: MarketData, interval: str) -> list[bytes]:
    """The history frames as a subscription built them before: one per closed candle of the builder, in order."""
    spec = Spec("klines", "BTCUSDT", "all", interval=interval)
    b = md._builders[("BTCUSDT", "all", interval)]
    return [messages.push_frame("klines", spec.topic, messages.candle_data(c, "BTCUSDT", "all", interval, True))
            for c in b.history]


async def _history_of(md: MarketData, interval: str) -> list[bytes]:
    q = ClientQueue(5000, 20000)
    await md.subscribe(Spec("klines", "BTCUSDT", "all", interval=interval), q, '{"type":"ack"}')
    frames = [f for f in q._take()]
    return [f for f in frames[1:] if b'"history":true' in payload_of(f)]


def test_history_frames_follow_the_builders_through_gaps_ticks_and_a_full_history() -> None:
    async def run() -> None:
        md = MarketData(load_settings(env={"REDIS_URL": "redis://127.0.0.1:9", "SR_WS__KLINE_HISTORY": "20"}))
        md.hub = _Hub()  # type: ignore[assignment]
        try:
            ts = now_us() - 40 * S  # a subscription closes the buckets up to now
            for n in range(60):  # trades closing buckets, several per bucket, one exchange and the other
                ts += S // 3
                md.dispatch("t", _trade(n, ts, ("binance", "okx")[n % 2]))
            first = await _history_of(md, "1s")
            assert first == _expected(md, "1s") and len(first) == 20
            md.tick(ts + 5 * S)  # the ticker closes empty buckets (flat candles)
            ts += 200 * S  # a silence longer than the history: only the last 20 flat candles are kept
            md.dispatch("t", _trade(100, ts))
            md.tick(ts + 3 * S)
            again = await _history_of(md, "1s")
            assert again == _expected(md, "1s") and len(again) == 20
            for iv in ("10s", "1m", "5m"):
                assert await _history_of(md, iv) == _expected(md, iv)
            assert await _history_of(md, "1s") == again  # a second subscriber: the same frames
        finally:
            await md._redis.aclose()

    asyncio.run(run())
