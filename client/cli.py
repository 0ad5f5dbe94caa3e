"""``python -m client``: live tables in the terminal.

    python -m client watch best_touch BTCUSDT ETHUSDT --exchange all
    python -m client watch trades BTCUSDT --exchange okx
    python -m client watch klines BTCUSDT --interval 1m
    python -m client watch ewma BTCUSDT --half-life 30
    python -m client orders [--status open]
    python -m client balance
    python -m client keys create my-bot --scope read --scope trade [--expires-in 86400]
    python -m client keys list
    python -m client keys delete <id>
    python -m client password            # new password from SR_NEW_PASSWORD, --new-password or a prompt

Credentials: an API key in ``SR_API_KEY`` (or ``--api-key``), else ``SR_USER`` / ``SR_PASSWORD`` or ``--user`` /
``--password`` (``--register`` creates the account when it does not exist); the token of such a login is
revoked (``POST /logout``) when the command ends. ``keys`` and ``password`` need the username and password. ``--count N`` stops after N updates and ``--seconds S`` after S seconds. On a terminal
the table is redrawn in place; otherwise each update is printed below the previous one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from client.demo import default_url
from client.models import ApiKey, Balance, BestTouch, Ewma, Kline, Order, StreamMessage, Trade
from client.sdk import API_KEY_ENV, ApiError, SimpleRouterClient, StreamClosed, Subscription

CLEAR = "\033[H\033[2J"
API_KEY_PREFIX = "srk_"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: frozenset[int] = frozenset()) -> str:
    """Plain aligned columns; ``right`` are the indexes of right-aligned (numeric) columns."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths,
                                                                                               strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, Decimal):  # 60192.16000000 -> 60192.16 (display only; the value is exact either way)
        return format(v.normalize(), "f")
    return str(v)


def clock(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, UTC).strftime("%H:%M:%S.%f")[:-3] if ts_us else "-"


def touch_row(m: BestTouch) -> list[Any]:
    return [m.symbol, m.exchange, m.bid_exchange or "-", m.bid_sz, m.bid_px, m.ask_px, m.ask_sz,
            m.ask_exchange or "-", "yes" if m.crossed else "", clock(m.ts_event_us)]


TOUCH_HEADERS = ["symbol", "filter", "bid ex", "bid size", "bid", "ask", "ask size", "ask ex", "crossed", "time"]


def trade_row(m: Trade) -> list[Any]:
    return [clock(m.ts_event_us), m.symbol, m.exchange, m.side, m.price, m.size, m.trade_id]


TRADE_HEADERS = ["time", "symbol", "exchange", "side", "price", "size", "id"]


def kline_row(m: Kline) -> list[Any]:
    return [m.symbol, m.exchange, m.interval, clock(m.open_time_us)[:8], m.open, m.high, m.low, m.close, m.volume,
            m.trades, "closed" if m.closed else "open"]


KLINE_HEADERS = ["symbol", "filter", "interval", "open time", "open", "high", "low", "close", "volume", "trades",
                 "state"]


def ewma_row(m: Ewma) -> list[Any]:
    return [m.symbol, m.exchange, m.half_life, m.value, m.price, clock(m.ts_event_us)]


EWMA_HEADERS = ["symbol", "filter", "half-life s", "ewma", "last price", "time"]


def order_rows(orders: Sequence[Order]) -> list[list[Any]]:
    return [[o.token_id, o.symbol, o.type, o.side, o.price if o.price is not None else "market", o.quantity,
             o.status, o.filled_quantity, o.average_price if o.average_price is not None else "-",
             clock(o.updated_us)] for o in orders]


ORDER_HEADERS = ["token_id", "symbol", "type", "side", "price", "quantity", "status", "filled", "avg price",
                 "updated"]


def balance_rows(b: Balance) -> list[list[Any]]:
    return [[a, t, b.available.get(a, 0), b.reserved.get(a, 0)] for a, t in b.total.items()]


BALANCE_HEADERS = ["asset", "total", "available", "reserved"]


class Screen:
    def __init__(self, title: str) -> None:
        self.title = title
        self.tty = sys.stdout.isatty()
        self.updates = 0

    def show(self, body: str) -> None:
        self.updates += 1
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        head = f"{self.title}   (update {self.updates}, {stamp} UTC, Ctrl-C to quit)"
        sys.stdout.write((CLEAR if self.tty else "\n") + head + "\n" + body + "\n")
        sys.stdout.flush()


async def _client(args: argparse.Namespace, *, key_ok: bool = True) -> SimpleRouterClient:
    key = (args.api_key or os.environ.get(API_KEY_ENV)) if key_ok else None
    if key:
        return SimpleRouterClient(args.url, api_key=key)
    user, password = args.user or os.environ.get("SR_USER"), args.password or os.environ.get("SR_PASSWORD")
    if not user or not password:
        raise SystemExit(f"credentials needed: set {API_KEY_ENV}, or SR_USER and SR_PASSWORD (or --api-key, or "
                         "--user / --password)")
    c = SimpleRouterClient(args.url)
    try:
        await c.login(user, password)
    except ApiError as e:
        if not (args.register and e.code == "invalid_credentials"):
            await c.aclose()
            raise
        await c.register(user, password)
    return c


async def _close(c: SimpleRouterClient) -> None:
    """Revoke the command's own login (an API key stays), then close."""
    try:
        if c.token and not c.token.startswith(API_KEY_PREFIX):  # a token here is always this command's login
            with contextlib.suppress(ApiError, httpx.HTTPError):
                await c.logout()
    finally:
        await c.aclose()


def _done(screen: Screen, args: argparse.Namespace, t0: float) -> bool:
    return (args.count is not None and screen.updates >= args.count) or (
        args.seconds is not None and time.monotonic() - t0 >= args.seconds)


async def watch(args: argparse.Namespace) -> None:
    c = await _client(args)
    screen = Screen(f"{args.stream} {' '.join(args.symbols)} exchange={args.exchange} @ {args.url}")
    latest: dict[str, list[Any]] = {}
    recent: deque[list[Any]] = deque(maxlen=args.rows)
    t0 = time.monotonic()
    try:
        async with c.stream() as ws:
            queue: asyncio.Queue[StreamMessage] = asyncio.Queue()
            subs = [await ws.subscribe(args.stream, s, exchange=args.exchange, interval=args.interval,
                                       half_life=args.half_life) for s in args.symbols]

            async def pump(sub: Subscription[StreamMessage]) -> None:
                async for m in sub:
                    await queue.put(m)

            pumps = [asyncio.create_task(pump(s)) for s in subs]
            try:
                while not _done(screen, args, t0):
                    left = None if args.seconds is None else max(0.0, args.seconds - (time.monotonic() - t0))
                    try:
                        m = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        break
                    if isinstance(m, Trade):
                        recent.appendleft(trade_row(m))
                        screen.show(table(TRADE_HEADERS, list(recent), frozenset({4, 5})))
                    elif isinstance(m, BestTouch):
                        latest[m.topic] = touch_row(m)
                        screen.show(table(TOUCH_HEADERS, list(latest.values()), frozenset({3, 4, 5, 6})))
                    elif isinstance(m, Kline):
                        latest[m.topic] = kline_row(m)
                        screen.show(table(KLINE_HEADERS, list(latest.values()), frozenset(range(4, 10))))
                    elif isinstance(m, Ewma):
                        latest[m.topic] = ewma_row(m)
                        screen.show(table(EWMA_HEADERS, list(latest.values()), frozenset({2, 3, 4})))
            finally:
                for p in pumps:
                    p.cancel()
    finally:
        await _close(c)


async def poll(args: argparse.Namespace) -> None:
    c = await _client(args)
    screen = Screen(f"{args.command} of {args.user or os.environ.get('SR_USER')} @ {args.url}")
    t0 = time.monotonic()
    try:
        while True:
            if args.command == "orders":
                page = await c.list_orders(args.status, limit=args.rows)
                body = table(ORDER_HEADERS, order_rows(page.items), frozenset({4, 5, 7, 8}))
                body += f"\n{len(page.items)} of {page.total} orders"
            else:
                body = table(BALANCE_HEADERS, balance_rows(await c.balance()), frozenset({1, 2, 3}))
            screen.show(body)
            if _done(screen, args, t0):
                return
            await asyncio.sleep(args.every)
    finally:
        await _close(c)


KEY_HEADERS = ("id", "name", "scopes", "created", "expires", "last used")


def key_rows(keys: Sequence[ApiKey]) -> list[list[Any]]:
    def when(us: int | None) -> str:
        return "-" if us is None else datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M")
    return [[k.id, k.name, ",".join(k.scopes), when(k.created_us), when(k.expires_us), when(k.last_used_us)]
            for k in keys]


async def keys(args: argparse.Namespace) -> None:
    c = await _client(args, key_ok=False)
    try:
        if args.action == "create":
            k = await c.create_api_key(args.name, args.scope or ["read"], expires_in_s=args.expires_in)
            print(table(KEY_HEADERS, key_rows([k])))
            print(f"\nthe key, shown this once (export {API_KEY_ENV}=...):\n{k.key}")
        elif args.action == "delete":
            await c.delete_api_key(args.id)
            print(f"deleted {args.id}")
        else:
            print(table(KEY_HEADERS, key_rows(await c.api_keys())))
    finally:
        await _close(c)


async def password(args: argparse.Namespace) -> None:
    new = args.new_password or os.environ.get("SR_NEW_PASSWORD") or getpass.getpass("new password: ")
    c = await _client(args, key_ok=False)
    try:
        await c.change_password(args.password or os.environ.get("SR_PASSWORD") or "", new)
        print("password changed: every earlier token is revoked")
    finally:
        await _close(c)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=default_url(), help="gateway base URL (default: SR_URL or PORT)")
    common.add_argument("--user", help="username (default: SR_USER)")
    common.add_argument("--password", help="password (default: SR_PASSWORD)")
    common.add_argument("--api-key", dest="api_key", help=f"an API key instead of a login (default: {API_KEY_ENV})")
    common.add_argument("--register", action="store_true", help="create the account if it does not exist")
    common.add_argument("--count", type=int, help="stop after this many updates")
    common.add_argument("--seconds", type=float, help="stop after this many seconds")
    common.add_argument("--rows", type=int, default=20, help="rows shown (trades, orders)")

    ap = argparse.ArgumentParser(prog="python -m client", description="Simple Router in the terminal.")
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", parents=[common], help="live market data table")
    w.add_argument("stream", choices=["best_touch", "trades", "klines", "ewma"])
    w.add_argument("symbols", nargs="+", metavar="SYMBOL")
    w.add_argument("--exchange", default="all", choices=["all", "binance", "okx"])
    w.add_argument("--interval", help="klines: 1s, 10s, 1m or 5m")
    w.add_argument("--half-life", dest="half_life", help="ewma: seconds")
    o = sub.add_parser("orders", parents=[common], help="your orders, refreshed")
    o.add_argument("--status", choices=["open", "filled", "cancelled", "expired", "rejected"])
    o.add_argument("--every", type=float, default=1.0, help="seconds between refreshes")
    b = sub.add_parser("balance", parents=[common], help="your balances, refreshed")
    b.add_argument("--every", type=float, default=1.0, help="seconds between refreshes")
    k = sub.add_parser("keys", help="your API keys (needs the username and password)")
    ka = k.add_subparsers(dest="action", required=True)
    ka.add_parser("list", parents=[common], help="every key, never the secret")
    kc = ka.add_parser("create", parents=[common], help="a new key, printed once")
    kc.add_argument("name")
    kc.add_argument("--scope", action="append", choices=["read", "trade"], help="read (default) and/or trade")
    kc.add_argument("--expires-in", dest="expires_in", type=int, help="seconds until it stops working")
    kd = ka.add_parser("delete", parents=[common], help="revoke a key at once")
    kd.add_argument("id")
    pw = sub.add_parser("password", parents=[common], help="change the password (revokes every earlier token)")
    pw.add_argument("--new-password", dest="new_password", help="default: SR_NEW_PASSWORD, else a prompt")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "watch" and args.stream == "klines" and not args.interval:
        args.interval = "1m"
    if args.command == "watch" and args.stream == "ewma" and not args.half_life:
        args.half_life = "30"
    try:
        run = {"watch": watch, "keys": keys, "password": password}.get(args.command, poll)
        asyncio.run(run(args))
    except ApiError as e:
        print(f"error: {e.status or 'ws'} {e.code}: {e.detail}", file=sys.stderr)
        return 1
    except (StreamClosed, OSError, httpx.HTTPError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0
