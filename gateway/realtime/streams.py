"""Per-topic market-data state of one gateway process, fed by the ``RedisHub``.

Channel and snapshot names come from ``settings.redis.keyspace`` (plain ``md:bbo:<ex>:<SYM>`` on one server,
partition-tagged on a cluster).

- best touch: the latest BBO of each exchange per symbol (seeded from ``md:last:bbo:*`` when the channel
  is first subscribed) and the feed health from ``md:status:*``; on every change the touch of each
  subscribed ``(symbol, filter)`` topic is recomputed, serialized once and conflated into the queues;
- trades: each trade is serialized once per topic (its exchange's and ``all``) and queued in order;
- klines: a ``KlineBuilder`` for every symbol x filter x interval runs from process start (the trade
  channels are held for the process's life), closed on a 1 s timer aligned to the wall clock; each closed
  candle's history frame is built once, when it closes, and a new subscriber's history is queued in one step;
- ewma: one ``EwmaFan`` per ``(symbol, filter, half-life)`` topic, each subscription's average started at
  subscription time; subscriptions that joined before the same trade share one value and one frame.

Every handler here runs synchronously in the hub's reader: it only appends to client queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.realtime import messages
from gateway.realtime.book_stream import BookStreams
from gateway.realtime.protocol import EXCHANGE_FILTERS, Spec, Subscription
from gateway.realtime.queue import ClientQueue
from gateway.realtime.seed import seed_last
from shared.best_touch import Touch, best_touch
from shared.ewma import EwmaFan
from shared.feed_health import FeedHealth
from shared.klines import INTERVALS_US, Candle, KlineBuilder
from shared.pubsub import RedisHub
from shared.redis_conn import connect_any
from shared.schema import BBO, Book, FeedStatus, SchemaError, Trade, decode
from shared.settings import EXCHANGES, Settings
from shared.timeutil import now_us

log = logging.getLogger(__name__)


def _touch_key(t: Touch) -> tuple[object, ...]:
    return (t.bid_px, t.bid_sz, t.bid_exchanges, t.ask_px, t.ask_sz, t.ask_exchanges, t.live)


@dataclass(eq=False)
class _Topic:
    spec: Spec
    subs: set[ClientQueue] = field(default_factory=set)
    last: tuple[object, ...] | None = None


@dataclass(eq=False)
class _EwmaSub:
    spec: Spec
    queue: ClientQueue


def _candle_slot(topic: str, c: Candle) -> str:
    # one slot per candle: a slow client gets the latest state of each candle, closed ones included
    return f"{topic}|{c.open_time_us}"


def _fan_key(spec: Spec) -> tuple[str, str]:
    return spec.topic, str(spec.half_life)  # 30 and 30.0 share a topic name but not their "half_life" digits


class MarketData:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keyspace = settings.redis.keyspace
        self.hub = RedisHub(settings.redis.url, settings.redis.cluster, self.dispatch)
        self.health = FeedHealth(settings.feeds.stale_after_s)
        self._live: tuple[str, ...] = ()
        self._quotes: dict[str, dict[str, BBO]] = {s: {} for s in settings.symbols}
        self._touch: dict[tuple[str, str], _Topic] = {}
        self._trades: dict[tuple[str, str], _Topic] = {}
        self._klines: dict[tuple[str, str, str], _Topic] = {}
        self._builders: dict[tuple[str, str, str], KlineBuilder] = {
            (s, f, iv): KlineBuilder(us, settings.ws.kline_history)
            for s in settings.symbols for f in EXCHANGE_FILTERS for iv, us in INTERVALS_US.items()
        }
        # the frames of each builder's closed candles, built as they close (a closed candle never changes), so a
        # new subscriber's history costs one list copy, not one serialization per candle while others wait
        self._history: dict[tuple[str, str, str], deque[bytes]] = {
            key: deque(maxlen=b.keep) for key, b in self._builders.items()}
        self._kline_specs = {key: Spec("klines", key[0], key[1], interval=key[2]) for key in self._builders}
        self._ewma: dict[tuple[str, str], dict[tuple[str, str], EwmaFan[_EwmaSub]]] = {}
        self._grace_us = int(settings.ws.kline_grace_s * 1_000_000)
        self._wall_clock = settings.ws.kline_clock == "wall"  # "trades": a replay's candles close on its own times
        self._redis = connect_any(settings.redis.url, settings.redis.cluster)
        self.books = BookStreams(self.hub, self._redis, self.keyspace, settings.symbols)
        self._ticker: asyncio.Task[None] | None = None
        self.bad_messages = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.hub.start()
        for ex in EXCHANGES:
            await self.hub.acquire(self.keyspace.status_channel(ex))
            for sym in self.settings.symbols:
                await self.hub.acquire(self.keyspace.md_channel("trade", ex, sym))
        self._ticker = asyncio.create_task(self._tick_loop(), name="md-ticker")

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.hub.stop()
        await self._redis.aclose()

    # -- subscriptions -----------------------------------------------------------------------------

    async def subscribe(self, spec: Spec, queue: ClientQueue, ack: str) -> Subscription:
        """Attach ``queue`` to ``spec``'s topic; ``ack`` is queued first, then any snapshot, atomically."""
        sym, flt = spec.symbol, spec.exchange
        exchanges = EXCHANGES if flt == "all" else (flt,)
        if spec.stream == "book":
            return await self.books.subscribe(spec, queue, ack)
        if spec.stream == "best_touch":
            for ex in exchanges:
                if await self.hub.acquire(self.keyspace.md_channel("bbo", ex, sym)):
                    await self._seed(ex, sym)
            topic = self._touch.setdefault((sym, flt), _Topic(spec))
            queue.put_critical(ack)
            touch = self._compute(sym, flt)
            queue.put_conflated(spec.topic, messages.push_frame("best_touch", spec.topic, messages.touch_data(touch, flt),
                                                      snapshot=True))
            if not topic.subs:
                topic.last = _touch_key(touch)
            topic.subs.add(queue)
            return Subscription(lambda: self._unsubscribe(spec, queue, None))
        for ex in exchanges:
            await self.hub.acquire(self.keyspace.md_channel("trade", ex, sym))
        queue.put_critical(ack)
        if spec.stream == "trades":
            self._trades.setdefault((sym, flt), _Topic(spec)).subs.add(queue)
            return Subscription(lambda: self._unsubscribe(spec, queue, None))
        if spec.stream == "klines":
            assert spec.interval is not None
            key = (sym, flt, spec.interval)
            b = self._builders[key]
            # the ticker may not have run yet
            closed = b.close_until(now_us() - self._grace_us) if self._wall_clock else []
            if closed:
                self._closed(key, closed)
            queue.put_critical_frames(list(self._history[key]))
            if b.current is not None:
                queue.put_conflated(_candle_slot(spec.topic, b.current), self._candle_frame(spec, b.current))
            self._klines.setdefault(key, _Topic(spec)).subs.add(queue)
            return Subscription(lambda: self._unsubscribe(spec, queue, None))
        assert spec.stream == "ewma" and spec.half_life is not None
        sub = _EwmaSub(spec, queue)
        fans = self._ewma.setdefault((sym, flt), {})
        fan = fans.get(_fan_key(spec))
        if fan is None:
            fan = fans[_fan_key(spec)] = EwmaFan(spec.half_life)
        fan.join(sub)
        return Subscription(lambda: self._unsubscribe(spec, queue, sub))

    async def _unsubscribe(self, spec: Spec, queue: ClientQueue, extra: _EwmaSub | None) -> None:
        sym, flt = spec.symbol, spec.exchange
        exchanges = EXCHANGES if flt == "all" else (flt,)
        if spec.stream == "ewma":
            fans = self._ewma.get((sym, flt), {})
            fan = fans.get(_fan_key(spec))
            if fan is not None and extra is not None:
                fan.leave(extra)
                if not len(fan):
                    del fans[_fan_key(spec)]
        else:
            tables: dict[str, dict[Any, _Topic]] = {
                "best_touch": self._touch, "trades": self._trades, "klines": self._klines}
            table = tables[spec.stream]
            key = (sym, flt, spec.interval) if spec.stream == "klines" else (sym, flt)
            topic = table.get(key)
            if topic is not None:
                topic.subs.discard(queue)
                if not topic.subs:
                    del table[key]
        kind = "bbo" if spec.stream == "best_touch" else "trade"
        for ex in exchanges:
            if await self.hub.release(self.keyspace.md_channel(kind, ex, sym)) and kind == "bbo":
                self._quotes[sym].pop(ex, None)  # no longer followed: must be re-seeded next time

    async def _seed(self, exchange: str, symbol: str) -> None:
        key = self.keyspace.md_last_key("bbo", exchange, symbol)
        seeded = await seed_last(self._redis, key, BBO, exchange, symbol, self._quotes[symbol])
        if seeded is None:
            self.bad_messages += 1
        elif seeded:
            self._touch_changed(symbol)

    # -- the reader's handler ----------------------------------------------------------------------

    def dispatch(self, channel: str, raw: bytes) -> None:
        try:
            msg = decode(raw)
        except SchemaError as e:
            self.bad_messages += 1
            log.debug("bad message on %s: %s", channel, e)
            return
        if isinstance(msg, BBO):
            self.on_bbo(msg)
        elif isinstance(msg, Trade):
            self.on_trade(msg)
        elif isinstance(msg, FeedStatus):
            self.health.update(msg, now_us())
            self._check_live()
        elif isinstance(msg, Book):
            self.books.on_book(msg)

    def on_bbo(self, q: BBO) -> None:
        quotes = self._quotes.get(q.symbol)
        if quotes is None or q.exchange not in EXCHANGES:
            return
        if not (q.bid_px.is_finite() and q.ask_px.is_finite() and q.bid_sz.is_finite() and q.ask_sz.is_finite()):
            self.bad_messages += 1
            return
        quotes[q.exchange] = q
        for flt in (q.exchange, "all"):
            self._push_touch(q.symbol, flt)

    def _touch_changed(self, symbol: str) -> None:
        for flt in EXCHANGE_FILTERS:
            self._push_touch(symbol, flt)

    def _compute(self, symbol: str, flt: str) -> Touch:
        quotes = self._quotes[symbol].values()
        live = self._live if flt == "all" else tuple(e for e in self._live if e == flt)
        return best_touch(symbol, quotes, live)

    def _push_touch(self, symbol: str, flt: str) -> None:
        topic = self._touch.get((symbol, flt))
        if topic is None or not topic.subs:
            return
        touch = self._compute(symbol, flt)
        key = _touch_key(touch)
        if key == topic.last:
            return
        topic.last = key
        name = topic.spec.topic
        frame = messages.push_frame("best_touch", name, messages.touch_data(touch, flt))
        for qu in topic.subs:
            qu.put_conflated(name, frame)

    def _check_live(self) -> None:
        live = self.health.live(now_us())
        if live != self._live:
            self._live = live
            for sym in self._quotes:
                self._touch_changed(sym)
            self.books.on_live(live)

    def on_trade(self, t: Trade) -> None:
        if t.symbol not in self._quotes or t.exchange not in EXCHANGES:
            return
        if not (t.price.is_finite() and t.size.is_finite()) or t.price <= 0 or t.size < 0:
            self.bad_messages += 1
            return
        data: bytes | None = None
        for flt in (t.exchange, "all"):
            topic = self._trades.get((t.symbol, flt))
            if topic is not None and topic.subs:
                data = data or messages.trade_data(t)
                frame = messages.push_frame("trades", topic.spec.topic, data)
                for qu in topic.subs:
                    qu.put_strict(frame)
            for iv in INTERVALS_US:
                closed = self._builders[(t.symbol, flt, iv)].add(t.price, t.size, t.ts_event_us, t.ts_recv_us)
                if closed:
                    self._closed((t.symbol, flt, iv), closed)
            for (name, _), fan in self._ewma.get((t.symbol, flt), {}).items():
                frames = messages.EwmaFrames(name, t.symbol, flt, fan.half_life, t)
                for value, members in fan.update(t.price, t.ts_event_us):
                    frame = frames(value)
                    for sub in members:
                        sub.queue.put_conflated(name, frame)

    # -- klines ------------------------------------------------------------------------------------

    def _candle_frame(self, spec: Spec, c: Candle, history: bool = False) -> bytes:
        assert spec.interval is not None
        data = messages.candle_data(c, spec.symbol, spec.exchange, spec.interval, history)
        return messages.push_frame("klines", spec.topic, data)

    def _closed(self, key: tuple[str, str, str], candles: list[Candle]) -> None:
        spec = self._kline_specs[key]
        self._history[key].extend(self._candle_frame(spec, c, history=True) for c in candles)
        self._push_candles(key, candles)

    def _push_candles(self, key: tuple[str, str, str], candles: Iterable[Candle]) -> None:
        topic = self._klines.get(key)
        if topic is None or not topic.subs:
            return
        name = topic.spec.topic
        for c in candles:
            frame = self._candle_frame(topic.spec, c)
            slot = _candle_slot(name, c)
            for qu in topic.subs:
                qu.put_conflated(slot, frame)

    def tick(self, now: int) -> None:
        """Once a second: close finished buckets, push every open candle, notice stale feeds."""
        self._check_live()
        cutoff = now - self._grace_us
        for key, b in self._builders.items():
            closed = b.close_until(cutoff) if self._wall_clock else []
            if closed:
                self._closed(key, closed)
            if b.current is not None:
                self._push_candles(key, (b.current,))

    async def _tick_loop(self) -> None:
        while True:
            now = now_us()
            # wake just after each wall-clock second plus the grace, when a bucket can be closed
            delay = (1_000_000 - (now - self._grace_us) % 1_000_000) / 1_000_000
            await asyncio.sleep(delay + 0.001)
            try:
                self.tick(now_us())
            except Exception:
                log.exception("market-data tick failed")

    def stats(self) -> dict[str, object]:
        return {"channels": self.hub.channels, "messages": self.hub.messages, "bad_messages": self.bad_messages,
                "live": list(self._live)}

