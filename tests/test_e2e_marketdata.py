"""End to end: the real simulator -> the real ingestors (processes) -> real Redis -> a pub/sub subscriber.

Prices are pushed with the random walk paused, so every value that reaches Redis can be checked exactly.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from shared import names
from shared.schema import BBO, Book, FeedStatus, Trade, decode
from simulator import Simulator
from tests.e2etools import MdSink, feed_hash, ingestor_processes, is_md, wait_until
from tests.simtools import SETTINGS

# (bid, ask, trade price) per pair, on the pair's tick; OKX quotes one tick apart from Binance.
QUOTES = {
    "BTCUSDT": ("60000.10", "60000.25", "60000.25"),
    "ETHUSDT": ("3000.11", "3000.13", "3000.11"),
    "SOLUSDT": ("150.01", "150.02", "150.02"),
    "XRPUSDT": ("0.6001", "0.6003", "0.6001"),
    "DOGEUSDT": ("0.12001", "0.12004", "0.12004"),
}
SIZES = {"BTCUSDT": "0.01234", "ETHUSDT": "1.5", "SOLUSDT": "12.345", "XRPUSDT": "100.5", "DOGEUSDT": "2500"}
OKX_INSTS = [p.okx for p in SETTINGS.pairs]


def quote_for(exchange: str, symbol: str) -> tuple[str, str, str]:
    bid, ask, px = QUOTES[symbol]
    if exchange == "binance":
        return bid, ask, px
    tick = SETTINGS.pair(symbol).tick_size  # type: ignore[union-attr]
    return str(Decimal(bid) - tick), str(Decimal(ask) + tick), str(Decimal(px) + tick)


async def wait_subscribed(sim: Simulator, within: float = 15.0) -> None:
    await sim.binance.wait_connections(1, within)
    for inst in OKX_INSTS:
        for ch in ("bbo-tbt", "books5", "trades"):
            await sim.okx.wait_subscribed((ch, inst), within)


async def test_every_pair_of_both_exchanges_arrives_exactly(tmp_path: Path, redis_url: str,
                                                            aredis: aioredis.Redis) -> None:
    async with Simulator(settings=SETTINGS, seed=7) as sim, MdSink.open(redis_url) as sink:
        sim.pause()
        async with ingestor_processes(redis_url, sim, tmp_path) as procs:
            await wait_subscribed(sim)
            assert sim.binance.subscriptions() == {f"{p.binance.lower()}@{s}" for p in SETTINGS.pairs
                                                   for s in ("bookTicker", "depth10@100ms", "trade")}
            for ex in ("binance", "okx"):
                server = sim.server(ex)
                for sym in QUOTES:
                    bid, ask, px = quote_for(ex, sym)
                    await server.push_bbo(sym, bid=bid, ask=ask, bid_qty=SIZES[sym], ask_qty="7")
                    await server.push_trade(sym, price=px, qty=SIZES[sym], side="sell" if ex == "okx" else "buy")

            for ex in ("binance", "okx"):
                for sym in QUOTES:
                    bid, ask, px = quote_for(ex, sym)
                    bbo = await sink.wait(is_md("bbo", ex, sym))
                    assert isinstance(bbo, BBO)
                    assert (bbo.exchange, bbo.symbol) == (ex, sym)
                    assert (bbo.bid_px, bbo.bid_sz, bbo.ask_px, bbo.ask_sz) == (
                        Decimal(bid), Decimal(SIZES[sym]), Decimal(ask), Decimal(7))
                    book = await sink.wait(is_md("book", ex, sym))
                    assert isinstance(book, Book)
                    assert book.bids[0] == (Decimal(bid), Decimal(SIZES[sym]))
                    assert book.asks[0] == (Decimal(ask), Decimal(7))
                    assert len(book.bids) == (10 if ex == "binance" else 5)
                    assert all(a[0] > b[0] for a, b in zip(book.bids, book.bids[1:], strict=False))
                    trade = await sink.wait(is_md("trade", ex, sym))
                    assert isinstance(trade, Trade)
                    assert (trade.price, trade.size) == (Decimal(px), Decimal(SIZES[sym]))
                    assert trade.side == ("sell" if ex == "okx" else "buy")
                    assert trade.ts_recv_us >= trade.ts_event_us - 1_000_000
                    # The snapshot keys hold the same latest values.
                    last = decode(await aredis.get(names.md_last_key("bbo", ex, sym)))
                    assert last == bbo
                    assert decode(await aredis.get(names.md_last_key("book", ex, sym))) == book
                    assert await aredis.get(names.md_last_key("trade", ex, sym)) is None  # trades only stream

            # Exact digits on the wire: Binance sends 8 decimals, OKX the shortest form; both kept as sent.
            raw = dict(sink.raw)
            assert orjson.loads(raw["md:bbo:binance:BTCUSDT"])["bid_px"] == "60000.10000000"
            assert orjson.loads(raw["md:bbo:okx:BTCUSDT"])["bid_px"] == "60000.09"
            assert orjson.loads(raw["md:trade:okx:DOGEUSDT"])["size"] == "2500"

            for ex in ("binance", "okx"):
                await wait_until(lambda ex=ex: _hash_has(aredis, ex, msgs_bbo="5", msgs_trade="5"),
                                 what=f"{ex} status hash counters")
                h = await feed_hash(aredis, ex)
                assert h["state"] == "up" and h["connection"] == "connected", h
                assert int(h["msgs_book"]) >= 5 and h["rejected"] == "0" and h["reconnects"] == "0", h
                assert int(h["last_msg_us"]) >= int(h["connected_since_us"]) > 0
                assert h["url"].startswith(sim.binance_url if ex == "binance" else sim.okx_url)
                st = await sink.status(ex, "up")
                assert st.reason == "receiving market data"
            assert procs.alive("binance") and procs.alive("okx")
        # SIGTERM: a last "down" goes out and stays in the hash.
        for ex in ("binance", "okx"):
            await sink.wait(lambda c, m, ex=ex: c == names.status_channel(ex) and isinstance(m, FeedStatus)
                            and (m.state, m.reason) == ("down", "ingestor stopped"))
            assert (await feed_hash(aredis, ex))["state"] == "down"


async def _hash_has(redis: aioredis.Redis, exchange: str, **fields: str) -> bool:
    h = await feed_hash(redis, exchange)
    return all(h.get(k) == v for k, v in fields.items())
