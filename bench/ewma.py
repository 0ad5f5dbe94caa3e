"""Gateway CPU per delivered EWMA message with many subscribers on one pair, against trades with the same clients.

``python -m bench.ewma [--clients 200] [--trades 2000]`` runs the gateway's ``MarketData`` in-process (no Redis,
no sockets: a stub hub, each client a real ``ClientQueue`` with a sink that only counts bytes) and feeds it
encoded trades through ``dispatch``, flushing the queues after each trade as the event loop does. It reports
CPU (process time) per frame written, for:

- ``trades``: every client on ``trades:<SYM>:all``;
- ``ewma before``: the per-subscription ``Ewma`` the gateway had before ``EwmaFan`` (kept here as the baseline);
- ``ewma together``: ``EwmaFan``, every client subscribed before the same trade (one cohort, one value);
- ``ewma apart``: ``EwmaFan``, a trade between any two subscriptions (one cohort per client, its worst case);
- ``ewma before apart``: the baseline subscribed like ``ewma apart`` (the same cost as ``ewma before``);
- ``klines``: every client on ``klines:<SYM>:all:1s`` (pushed on the 1 s tick, so per tick, not per trade).

Every figure includes what every trade costs regardless of subscribers (decoding, the kline builders).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from decimal import Decimal
from typing import Any

from gateway.realtime import messages
from gateway.realtime.protocol import Spec, Subscription
from gateway.realtime.queue import ClientQueue
from gateway.realtime.streams import MarketData
from shared.ewma import Ewma
from shared.schema import Trade, encode
from shared.settings import EXCHANGES, load_settings

SYMBOL = "BTCUSDT"
T0 = 1_700_000_000_000_000


class _Hub:
    async def acquire(self, channel: str) -> bool:
        return False

    async def release(self, channel: str) -> bool:
        return False


class _Sink:
    on_resume: Any = None

    def __init__(self, keep: bool) -> None:
        self.writes = 0
        self.data: list[bytes] | None = [] if keep else None

    def writable_now(self) -> bool:
        return True

    def write_frames(self, data: bytes) -> None:
        self.writes += 1
        if self.data is not None:
            self.data.append(data)


class PerSubscriptionEwma(MarketData):
    """The baseline: one ``Ewma`` per subscription, one ``exp`` and one frame per subscriber per trade."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._own: list[tuple[Spec, ClientQueue, Ewma]] = []

    async def subscribe(self, spec: Spec, queue: ClientQueue, ack: str) -> Subscription:
        if spec.stream != "ewma":
            return await super().subscribe(spec, queue, ack)
        assert spec.half_life is not None
        queue.put_critical(ack)
        self._own.append((spec, queue, Ewma(spec.half_life)))
        return Subscription(lambda: asyncio.sleep(0))

    def on_trade(self, t: Trade) -> None:
        super().on_trade(t)
        for spec, queue, e in self._own:
            if spec.exchange in (t.exchange, "all"):
                assert spec.half_life is not None
                value = e.update(t.price, t.ts_event_us)
                queue.put_conflated(spec.topic, messages.push_frame("ewma", spec.topic, messages.ewma_data(
                    t.symbol, spec.exchange, spec.half_life, value, t)))


def _trade(i: int) -> bytes:
    price = Decimal(64000) + Decimal(i % 97) / 10
    return encode(Trade(EXCHANGES[i % 2], SYMBOL, str(i), price, Decimal("0.01"), "buy", T0 + i * 1000, T0 + i * 1000))


async def run(kind: str, clients: int, trades: int, keep: bool = False) -> tuple[float, int, list[list[bytes]]]:
    """CPU seconds, frames written and (with ``keep``) each client's writes."""
    settings = load_settings(env={"REDIS_URL": "redis://127.0.0.1:9"})  # never connected
    md = (PerSubscriptionEwma if kind.startswith("ewma before") else MarketData)(settings)
    md.hub = _Hub()  # type: ignore[assignment]
    if kind == "trades":
        spec = Spec("trades", SYMBOL, "all")
    elif kind == "klines":
        spec = Spec("klines", SYMBOL, "all", interval="1s")
    else:
        spec = Spec("ewma", SYMBOL, "all", half_life=Decimal(30))
    sinks = []
    n = 0
    for _ in range(clients):
        q = ClientQueue(settings.ws.queue_max, settings.ws.queue_hard_max)
        sink = _Sink(keep)
        q.attach(sink)
        sinks.append(sink)
        await md.subscribe(spec, q, '{"type":"ack"}')
        if kind.endswith("apart"):
            md.dispatch("md:trade", _trade(n))
            n += 1
        await asyncio.sleep(0)
    raws = [_trade(n + i) for i in range(trades)]
    before = sum(s.writes for s in sinks)
    cpu = time.process_time()
    if kind == "klines":
        for i, raw in enumerate(raws):
            md.dispatch("md:trade", raw)
            if i % 10 == 0:  # 100 trades per second of exchange time: a tick per 10 trades
                md.tick(T0 + (n + i) * 1000 + 2_000_000)
                await asyncio.sleep(0)
    else:
        for raw in raws:
            md.dispatch("md:trade", raw)
            await asyncio.sleep(0)
    cpu = time.process_time() - cpu
    await md._redis.aclose()
    return cpu, sum(s.writes for s in sinks) - before, [s.data or [] for s in sinks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--trades", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for each kind")
    args = ap.parse_args()
    kinds = ("trades", "ewma before", "ewma together", "ewma apart", "klines")
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for kind in kinds:
            cpu, frames, _ = asyncio.run(run(kind, args.clients, args.trades))
            best[kind] = min(best.get(kind, float("inf")), cpu / max(frames, 1) * 1e6)
    print(f"{args.clients} clients on {SYMBOL}, {args.trades} trades; gateway CPU per delivered frame (best of "
          f"{args.repeat}), and its ratio to trades:")
    for kind in kinds:
        print(f"  {kind:14} {best[kind]:7.2f} us   x{best[kind] / best['trades']:.2f}")


if __name__ == "__main__":
    main()
