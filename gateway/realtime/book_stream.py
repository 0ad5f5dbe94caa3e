"""The ``book`` stream: one exchange's top levels, or both merged by price (``shared.book_merge``).

``{"action": "subscribe", "stream": "book", "symbol": "BTCUSDT", "exchange": "all", "depth": 10}``: the latest
book of each exchange (seeded from ``md:last:book:*`` when its channel is first followed) is merged for every
subscribed ``(symbol, exchange filter, depth)`` topic on each change, serialized once and conflated into the
queues (a slow client gets the latest book); a snapshot first. An exchange whose feed is not live leaves the book.
Runs in the hub's reader, like ``streams.MarketData``, which routes ``book`` messages, live changes and ``book``
subscriptions here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.realtime import messages
from gateway.realtime.protocol import Spec, Subscription
from gateway.realtime.queue import ClientQueue
from gateway.realtime.seed import seed_last
from shared.book_merge import MergedBook, MergedLevel, merge_books
from shared.names import Keyspace
from shared.pubsub import RedisHub
from shared.redis_conn import Client
from shared.schema import Book
from shared.settings import EXCHANGES


@dataclass(eq=False)
class _BookTopic:
    spec: Spec
    subs: set[ClientQueue] = field(default_factory=set)
    last: tuple[object, ...] | None = None


def _levels(levels: tuple[MergedLevel, ...]) -> list[dict[str, Any]]:
    return [{"price": messages.num(lv.price), "size": messages.num(lv.size),
             "sizes": {ex: messages.num(sz) for ex, sz in lv.sizes}} for lv in levels]


def book_data(b: MergedBook, exchange: str, depth: int) -> dict[str, Any]:
    return {
        "symbol": b.symbol,
        "exchange": exchange,
        "depth": depth,
        "bids": _levels(b.bids),
        "asks": _levels(b.asks),
        "live": list(b.live),
        "crossed": bool(b.bids and b.asks and b.bids[0].price >= b.asks[0].price),
        "ts_event_us": b.ts_event_us,
        "ts_recv_us": b.ts_recv_us,
    }


class BookStreams:
    def __init__(self, hub: RedisHub, redis: Client, keyspace: Keyspace, symbols: tuple[str, ...]) -> None:
        self.hub = hub
        self.redis = redis
        self.keyspace = keyspace
        self._books: dict[str, dict[str, Book]] = {s: {} for s in symbols}
        self._topics: dict[tuple[str, str, int], _BookTopic] = {}
        self._live: tuple[str, ...] = ()
        self.bad_messages = 0

    def _merged(self, symbol: str, flt: str, depth: int) -> MergedBook:
        live = self._live if flt == "all" else tuple(e for e in self._live if e == flt)
        return merge_books(symbol, self._books[symbol].values(), live, depth)

    def _push(self, topic: _BookTopic) -> None:
        spec = topic.spec
        assert spec.depth is not None
        merged = self._merged(spec.symbol, spec.exchange, spec.depth)
        key = merged.key()
        if key == topic.last:
            return
        topic.last = key
        frame = messages.push_frame("book", spec.topic, book_data(merged, spec.exchange, spec.depth))
        for qu in topic.subs:
            qu.put_conflated(spec.topic, frame)

    def on_book(self, b: Book) -> None:
        books = self._books.get(b.symbol)
        if books is None or b.exchange not in EXCHANGES:
            return
        if not all(px.is_finite() and sz.is_finite() for px, sz in (*b.bids, *b.asks)):
            self.bad_messages += 1
            return
        books[b.exchange] = b
        for (sym, flt, _), topic in self._topics.items():
            if sym == b.symbol and flt in ("all", b.exchange) and topic.subs:
                self._push(topic)

    def on_live(self, live: tuple[str, ...]) -> None:
        self._live = live
        for topic in self._topics.values():
            if topic.subs:
                self._push(topic)

    async def subscribe(self, spec: Spec, queue: ClientQueue, ack: str) -> Subscription:
        assert spec.depth is not None
        sym, flt = spec.symbol, spec.exchange
        for ex in EXCHANGES if flt == "all" else (flt,):
            if await self.hub.acquire(self.keyspace.md_channel("book", ex, sym)):
                await self._seed(ex, sym)
        key = (sym, flt, spec.depth)
        topic = self._topics.setdefault(key, _BookTopic(spec))
        queue.put_critical(ack)
        merged = self._merged(sym, flt, spec.depth)
        queue.put_conflated(spec.topic, messages.push_frame("book", spec.topic,
                                                            book_data(merged, flt, spec.depth), snapshot=True))
        if not topic.subs:
            topic.last = merged.key()
        topic.subs.add(queue)
        return Subscription(lambda: self._unsubscribe(spec, queue))

    async def _unsubscribe(self, spec: Spec, queue: ClientQueue) -> None:
        assert spec.depth is not None
        key = (spec.symbol, spec.exchange, spec.depth)
        topic = self._topics.get(key)
        if topic is not None:
            topic.subs.discard(queue)
            if not topic.subs:
                del self._topics[key]
        for ex in EXCHANGES if spec.exchange == "all" else (spec.exchange,):
            if await self.hub.release(self.keyspace.md_channel("book", ex, spec.symbol)):
                self._books[spec.symbol].pop(ex, None)  # no longer followed: must be re-seeded next time

    async def _seed(self, exchange: str, symbol: str) -> None:
        key = self.keyspace.md_last_key("book", exchange, symbol)
        if await seed_last(self.redis, key, Book, exchange, symbol, self._books[symbol]) is None:
            self.bad_messages += 1
