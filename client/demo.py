"""A tour of every feature, against a running system (``make run FEED=sim``, then ``make demo``).

    python -m client.demo [--url http://127.0.0.1:8000] [--symbol BTCUSDT] [--strict]

Each step prints what it did and ``[ok]``, ``[skip]`` or ``[FAIL]``; the exit code is 1 if any step failed.
``--strict`` also fails the steps that are skipped when the gateway lacks a feature (WebSocket order actions).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from client.models import BestTouch, Ewma, Kline, Order, OrderEvent, Resync, SymbolInfo, Trade
from client.sdk import ApiError, SimpleRouterClient, Stream, Subscription

EXCHANGES = ("all", "binance", "okx")
INTERVALS = ("1s", "10s", "1m", "5m")
HALF_LIFE = Decimal(10)
TTY = sys.stdout.isatty()


def _c(code: str, s: str) -> str:
    return f"\033[{code}m{s}\033[0m" if TTY else s


def say(msg: str = "") -> None:
    print(msg, flush=True)


class Unsupported(Exception):
    """The gateway does not offer this feature (an older gateway); ``--strict`` makes it a failure."""


def default_url() -> str:
    return os.environ.get("SR_URL") or f"http://127.0.0.1:{os.environ.get('PORT') or 8000}"


def on_tick(price: Decimal, tick: Decimal, rounding: str) -> Decimal:
    return (price / tick).to_integral_value(rounding) * tick


def fmt_order(o: Order) -> str:
    px = "market" if o.price is None else f"@ {o.price}"
    avg = f", avg {o.average_price}" if o.average_price is not None else ""
    ex = f" from {'+'.join(o.exchanges)}" if o.exchanges else ""
    return (f"{o.token_id}: {o.type} {o.side} {o.quantity} {o.symbol} {px} -> {o.status}"
            f" (filled {o.filled_quantity}{avg}{ex}, fee {o.fee} {o.fee_asset}{', ' + o.reason if o.reason else ''})")


def expect_status(o: Order, want: str, what: str = "") -> None:
    if o.status != want:
        raise AssertionError(f"{what}: expected {want}, got {o.status}" if what else f"expected {want}, got {o.status}")


def describe(m: Any) -> str:
    if isinstance(m, BestTouch):
        bid = f"{m.bid_px} x {m.bid_sz} ({m.bid_exchange})" if m.bid_px is not None else "none"
        ask = f"{m.ask_px} x {m.ask_sz} ({m.ask_exchange})" if m.ask_px is not None else "none"
        return f"bid {bid} / ask {ask}, live {','.join(m.live) or '-'}"
    if isinstance(m, Trade):
        return f"{m.side} {m.size} @ {m.price} on {m.exchange} (id {m.trade_id})"
    if isinstance(m, Kline):
        t = time.strftime("%H:%M:%S", time.gmtime(m.open_time_us / 1e6))
        state = "closed" if m.closed else "open"
        return f"{t} O {m.open} H {m.high} L {m.low} C {m.close} V {m.volume} ({m.trades} trades, {state})"
    if isinstance(m, Ewma):
        return f"ewma {m.value:.6f} (half-life {m.half_life}s, last price {m.price})"
    if isinstance(m, OrderEvent):
        return f"{m.event}: {fmt_order(m.order)}"
    return repr(m)


class Demo:
    def __init__(self, url: str, symbol: str, strict: bool) -> None:
        self.url = url
        self.symbol = symbol
        self.strict = strict
        self.client = SimpleRouterClient(url)
        self.passed: list[str] = []
        self.failed: list[str] = []
        self.skipped: list[str] = []
        self.rules: SymbolInfo | None = None
        self.touch: BestTouch | None = None
        self.ws: Stream | None = None
        self.n = 0

    async def step(self, title: str, fn: Callable[[], Awaitable[None]], limit_s: float = 20.0) -> None:
        self.n += 1
        say()
        say(_c("1", f"== {self.n}. {title}"))
        try:
            await asyncio.wait_for(fn(), limit_s)
        except Unsupported as e:
            if self.strict:
                self.failed.append(title)
                say(_c("31", f"[FAIL] {title}: {e}"))
            else:
                self.skipped.append(title)
                say(_c("33", f"[skip] {title}: {e}"))
            return
        except Exception as e:  # a demo reports every failure and goes on
            self.failed.append(title)
            say(_c("31", f"[FAIL] {title}: {type(e).__name__}: {e}"))
            return
        self.passed.append(title)
        say(_c("32", f"[ok] {title}"))

    def order_id(self, what: str) -> str:
        return f"demo-{what}-{secrets.token_hex(3)}"

    # -- steps -------------------------------------------------------------------------------------

    async def health_and_info(self) -> None:
        say(f"  GET /health -> {await self.client.health()}")
        info = await self.client.info()
        say(f"  assets: {', '.join(info.assets)}; pairs: {', '.join(info.pairs)}")
        self.rules = info.symbols[self.symbol]
        r = self.rules
        say(f"  {r.symbol}: tick {r.tick_size}, lot {r.lot_step}, min notional {r.min_notional} {r.quote}, "
            f"fees maker {r.maker_fee} / taker {r.taker_fee}")

    async def accounts(self) -> None:
        name, password = f"demo_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
        user = await self.client.register(name, password)
        say(f"  POST /register {name!r} -> user id {user.id}")
        await self.client.login(name, password)
        say(f"  POST /login -> bearer token {self.client.token[:16] if self.client.token else ''}...")
        say(f"  GET /me -> {(await self.client.me()).username}")
        try:
            await self.client.login(name, "not the password")
        except ApiError as e:
            say(f"  a wrong password is refused: {e.status} {e.code} ({e.detail!r})")
        else:
            raise AssertionError("a wrong password was accepted")
        await self.client.login(name, password)

    async def streams(self) -> None:
        assert self.ws is not None
        subs: dict[str, Subscription[Any]] = {}
        for ex in EXCHANGES:
            subs[f"best_touch {ex}"] = await self.ws.best_touch(self.symbol, ex)
            subs[f"trades {ex}"] = await self.ws.trades(self.symbol, ex)
            for iv in INTERVALS:
                subs[f"klines {iv} {ex}"] = await self.ws.klines(self.symbol, iv, ex)
            subs[f"ewma {ex}"] = await self.ws.ewma(self.symbol, HALF_LIFE, ex)
        say(f"  {len(subs)} subscriptions on one WebSocket: {', '.join(sorted(await self.ws.list())[:3])}, ...")

        async def first(name: str, sub: Subscription[Any]) -> tuple[str, Any]:
            async for m in sub:
                if not isinstance(m, BestTouch) or (m.bid_px is not None and m.ask_px is not None):
                    return name, m
            raise AssertionError(f"{name}: the subscription ended")

        got = dict(await asyncio.gather(*(first(n, s) for n, s in subs.items())))
        for name in subs:
            say(f"  {subs[name].topic:<28} {describe(got[name])}")
        for name, sub in subs.items():
            if name != "best_touch all":
                await sub.unsubscribe()
        self.touch = got["best_touch all"]
        self._follower = asyncio.get_running_loop().create_task(self._follow(subs["best_touch all"]))

    async def _follow(self, sub: Subscription[BestTouch]) -> None:
        async for m in sub:
            if m.bid_px is not None and m.ask_px is not None:
                self.touch = m

    def prices(self) -> tuple[Decimal, Decimal, Decimal]:
        if self.touch is None or self.touch.bid_px is None or self.touch.ask_px is None or self.rules is None:
            raise AssertionError("no best touch yet (the market data step failed)")
        return self.touch.bid_px, self.touch.ask_px, self.rules.tick_size

    async def deposit(self) -> None:
        assert self.rules is not None
        for asset, amount in ((self.rules.quote, Decimal("100000")), (self.rules.base, Decimal("1"))):
            bal = await self.client.deposit(asset, amount)
            say(f"  POST /deposit {amount} {asset} -> total {bal.total[asset]}, available {bal.available[asset]}")
        try:
            await self.client.deposit(self.rules.quote, Decimal("-5"))
        except ApiError as e:
            say(f"  a negative deposit is refused: {e.status} {e.code}")

    async def limit_modify_cancel(self) -> None:
        bid, _, tick = self.prices()
        tid = self.order_id("limit")
        price = on_tick(bid * Decimal("0.95"), tick, ROUND_FLOOR)
        o = await self.client.place_order(tid, self.symbol, "buy", "0.001", price)
        say(f"  POST /orders (limit, 5% under the bid) -> {fmt_order(o)}, reserved {o.reserved} {o.reserve_asset}")
        o = await self.client.get_order(tid)
        say(f"  GET /orders/{tid} -> {o.status}")
        if o.status != "open":
            raise AssertionError(f"expected a resting order, got {o.status}")
        o = await self.client.modify_order(tid, price=on_tick(bid * Decimal("0.94"), tick, ROUND_FLOOR),
                                           quantity="0.002")
        say(f"  PUT /orders/{tid} -> price {o.price}, quantity {o.quantity}, version {o.version}")
        o = await self.client.cancel_order(tid)
        say(f"  DELETE /orders/{tid} -> {o.status}")
        try:
            await self.client.cancel_order(tid)
        except ApiError as e:
            say(f"  cancelling it again: {e.status} {e.code} ({e.detail})")
        expect_status(o, "cancelled")

    async def _settled(self, o: Order) -> Order:
        return o if o.is_final else await self.client.wait_order(o.token_id, timeout=10)

    async def fill(self) -> None:
        _, ask, tick = self.prices()
        price = on_tick(ask * Decimal("1.01"), tick, ROUND_CEILING)
        o = await self.client.place_order(self.order_id("fill"), self.symbol, "buy", "0.001", price)
        o = await self._settled(o)
        say(f"  marketable limit buy @ {price} (1% over the ask {ask}) -> {fmt_order(o)}")
        expect_status(o, "filled")

    async def market_and_ioc(self) -> None:
        bid, ask, tick = self.prices()
        o = await self._settled(await self.client.place_order(self.order_id("mkt"), self.symbol, "sell", "0.0005",
                                                              type="market"))
        say(f"  market sell -> {fmt_order(o)}")
        expect_status(o, "filled", "market order")
        price = on_tick(ask * Decimal("1.002"), tick, ROUND_CEILING)
        o = await self._settled(await self.client.place_order(self.order_id("ioc"), self.symbol, "buy", "0.0005",
                                                              price, type="ioc"))
        say(f"  IOC buy @ {price} (above the ask) -> {fmt_order(o)}")
        expect_status(o, "filled", "marketable IOC")
        price = on_tick(bid * Decimal("0.99"), tick, ROUND_FLOOR)
        o = await self._settled(await self.client.place_order(self.order_id("ioc"), self.symbol, "buy", "0.0005",
                                                              price, type="ioc"))
        say(f"  IOC buy @ {price} (under the bid) -> {fmt_order(o)}")
        expect_status(o, "expired", "IOC under the bid")

    async def ws_orders(self) -> None:
        assert self.ws is not None
        bid, ask, tick = self.prices()
        try:
            events = await self.ws.orders()
        except ApiError as e:
            raise Unsupported(f"the gateway has no 'orders' stream ({e.code})") from None
        say(f"  subscribed to {events.topic}")
        tid = self.order_id("ws")
        try:
            o = await self.ws.place_order(tid, self.symbol, "buy", "0.001", on_tick(bid * Decimal("0.95"), tick,
                                                                                     ROUND_FLOOR))
        except ApiError as e:
            if e.code == "unknown_action":
                raise Unsupported("the gateway has no WebSocket order actions (place_order)") from None
            raise
        say(f"  place_order over WS -> {fmt_order(o)}")
        o = await self.ws.modify_order(tid, price=on_tick(bid * Decimal("0.96"), tick, ROUND_FLOOR))
        say(f"  modify_order over WS -> price {o.price}, version {o.version}")
        o = await self.ws.cancel_order(tid)
        say(f"  cancel_order over WS -> {o.status}")
        tid2 = self.order_id("wsfill")
        o = await self.ws.place_order(tid2, self.symbol, "buy", "0.001",
                                      on_tick(ask * Decimal("1.01"), tick, ROUND_CEILING))
        say(f"  place_order over WS (marketable) -> {o.status}")
        want = {(tid, "accepted"), (tid, "modified"), (tid, "cancelled"), (tid2, "filled")}
        while want:
            ev = await events.next(10)
            if isinstance(ev, Resync):  # the gateway may have missed events: the orders in Redis are the truth
                say(f"  resync: {ev.reason}")
                break
            say(f"  order event: {describe(ev)}")
            want.discard((ev.order.token_id, ev.event))

    async def status_and_balances(self) -> None:
        page = await self.client.list_orders(limit=20)
        say(f"  GET /orders -> {page.total} orders")
        for o in page.items:
            say(f"    {fmt_order(o)}")
        fills = await self.client.fills()
        say(f"  GET /fills -> {fills.total} fills")
        for f in fills.items:
            say(f"    {f.token_id}: {f.side} {f.quantity} @ {f.price} on {f.exchange} ({f.liquidity}), "
                f"fee {f.fee} {f.fee_asset}")
        if fills.total < 3:
            raise AssertionError(f"expected at least 3 fills, got {fills.total}")
        bal = await self.client.balance()
        say("  GET /balance:")
        say(f"    {'asset':<6} {'total':>20} {'available':>20} {'reserved':>14}")
        for asset, total in bal.total.items():
            if total or bal.reserved.get(asset):
                say(f"    {asset:<6} {total:>20} {bal.available[asset]:>20} {bal.reserved[asset]:>14}")

    # -- run ---------------------------------------------------------------------------------------

    async def wait_up(self, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                await self.client.health()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)

    async def run(self, wait_s: float) -> int:
        say(_c("1", f"Simple Router demo against {self.url}"))
        t0 = time.monotonic()
        try:
            await self.wait_up(wait_s)
        except Exception as e:
            say(_c("31", f"[FAIL] the gateway at {self.url} does not answer ({e}); start it with `make run FEED=sim`"))
            return 1
        try:
            await self.step("health and info (REST)", self.health_and_info)
            await self.step("registration and login (REST)", self.accounts)
            async with self.client.stream() as ws:
                self.ws = ws
                await self.step("market data: best_touch, trades, klines 1s/10s/1m/5m, ewma x all/binance/okx (WS)",
                                self.streams, limit_s=30)
                await self.step("deposit (REST)", self.deposit)
                await self.step("limit order, status, modify, cancel (REST)", self.limit_modify_cancel)
                await self.step("a fill: marketable limit order (REST)", self.fill)
                await self.step("market and IOC orders (REST)", self.market_and_ioc)
                await self.step("orders over WebSocket and the orders stream (WS)", self.ws_orders)
                await self.step("order status, fills and balances (REST)", self.status_and_balances)
        finally:
            await self.client.aclose()
        say()
        summary = (f"{len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped "
                   f"in {time.monotonic() - t0:.1f}s")
        if self.failed:
            say(_c("31", f"DEMO FAILED: {summary}; failed: {'; '.join(self.failed)}"))
            return 1
        say(_c("32", f"DEMO OK: {summary}"))
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=default_url(), help="gateway base URL (default: SR_URL or PORT)")
    ap.add_argument("--symbol", default="BTCUSDT")
    ap.add_argument("--strict", action="store_true", help="a feature the gateway lacks is a failure")
    ap.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the gateway to answer")
    ap.add_argument("--timeout", type=float, default=120.0, help="the whole demo's time limit")
    args = ap.parse_args(argv)
    demo = Demo(args.url, args.symbol, args.strict)
    try:
        return asyncio.run(asyncio.wait_for(demo.run(args.wait), args.timeout))
    except TimeoutError:
        say(_c("31", f"DEMO FAILED: did not finish within {args.timeout:.0f}s"))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
