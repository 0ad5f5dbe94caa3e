"""Binance Spot public streams: URL routing, SUBSCRIBE & co., stream frames, and the server.

Pure parts first (``parse_stream``, ``parse_path``, ``apply_request``, ``BinanceFeed``), then the asyncio
``BinanceServer``. Shapes follow binance-spot-api-docs ``web-socket-streams.md`` and the real captures:

    /stream?streams=btcusdt@bookTicker/btcusdt@depth10@100ms   combined: {"stream": name, "data": payload}
    /ws, /ws/<stream>[/<stream>...]                             raw: payload only

Payloads (prices and quantities are strings with 8 decimals, ids and times are numbers)::

    <s>@bookTicker   {"u":400900217,"s":"BTCUSDT","b":"60000.10000000","B":"1.20000000","a":...,"A":...}
    <s>@depthN[@100ms] {"lastUpdateId":160,"bids":[["60000.1","1.2"],...N],"asks":[...]}
    <s>@trade        {"e":"trade","E":ms,"s":"BTCUSDT","t":1,"p":"...","q":"...","T":ms,"m":true,"M":true}
    <s>@aggTrade     {"e":"aggTrade","E":ms,"s":"BTCUSDT","a":1,"p":...,"q":...,"f":1,"l":1,"T":ms,"m":..,"M":true}
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.frames import Opcode
from websockets.http11 import Request, Response

from simulator.market import BookEvent, Event, Level, MarketModel, QuoteEvent, TradeEvent
from simulator.server import Conn, Data, MarketServer, now_ms, refusal

MAX_STREAMS = 1024
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_STREAM_RE = re.compile(r"^([a-z0-9]+)@(bookTicker|trade|aggTrade|depth(5|10|20)(@100ms)?)$")
_ID_STR_RE = re.compile(r"^[A-Za-z0-9]{1,36}$")
_INT64 = 1 << 63


@dataclass(frozen=True, slots=True)
class StreamKey:
    symbol: str  # Binance symbol, upper case
    kind: str  # bookTicker | trade | aggTrade | depth
    levels: int = 0
    fast: bool = False  # @100ms


def parse_stream(name: str) -> StreamKey | None:
    m = _STREAM_RE.match(name)
    if m is None:
        return None
    sym, kind, levels, fast = m.groups()
    if kind.startswith("depth"):
        return StreamKey(sym.upper(), "depth", int(levels), fast is not None)
    return StreamKey(sym.upper(), kind)


@dataclass(frozen=True, slots=True)
class Route:
    combined: bool
    streams: tuple[str, ...]


def parse_path(path: str, valid: Callable[[str], bool]) -> Route | tuple[int, str]:
    """The handshake path → route, or (HTTP status, body) to refuse it."""
    parts = urlsplit(path)
    if parts.path in ("/stream", "/stream/"):
        qs = parse_qs(parts.query, keep_blank_values=True)
        names = [n for n in "/".join(qs.get("streams", [])).split("/") if n]
        combined = True
    elif parts.path == "/ws" or parts.path == "/ws/" or parts.path.startswith("/ws/"):
        names = [n for n in parts.path[len("/ws"):].split("/") if n]
        combined = False
    else:
        return 404, "Not Found"
    if len(names) > MAX_STREAMS:
        return 400, "Invalid request: too many streams"
    for n in names:
        if not valid(n):
            return 400, f"Invalid request: invalid stream name `{n}`"
    return Route(combined, tuple(dict.fromkeys(names)))


@dataclass(slots=True)
class SubState:
    subs: dict[str, None] = field(default_factory=dict)
    combined: bool = True


def _err(code: int, msg: str, rid: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": rid}


def apply_request(text: Data, state: SubState, valid: Callable[[str], bool]) -> dict[str, Any]:
    """One client request → the reply; ``state`` is updated only when the whole request is valid."""
    try:
        req = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        return _err(3, f"Invalid JSON: {e.args[0] if e.args else 'expected value'}")
    if not isinstance(req, dict):
        return _err(2, "Invalid request: expected an object")
    rid = req.get("id")
    if "id" not in req or not (
        rid is None
        or (isinstance(rid, int) and not isinstance(rid, bool) and -_INT64 <= rid < _INT64)
        or (isinstance(rid, str) and _ID_STR_RE.match(rid))
    ):
        return _err(2, "Invalid request: request ID must be an unsigned integer")
    if "method" not in req:
        return _err(2, "Invalid request: missing field `method`", rid)
    method = req["method"]
    if method not in METHODS:
        expected = ", ".join(f"`{m}`" for m in METHODS)
        return _err(2, f"Invalid request: unknown variant `{method}`, expected one of {expected}", rid)
    params = req.get("params", [])
    if not isinstance(params, list):
        return _err(2, "Invalid request: invalid type for `params`, expected a sequence", rid)
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        for p in params:
            if not isinstance(p, str):
                return _err(2, "Invalid request: invalid type for stream name, expected a string", rid)
            if not valid(p):
                return _err(2, f"Invalid request: invalid stream name `{p}`", rid)
        if method == "SUBSCRIBE":
            if len(set(state.subs) | set(params)) > MAX_STREAMS:
                return _err(2, "Invalid request: too many streams", rid)
            for p in params:
                state.subs[p] = None
        else:
            for p in params:
                state.subs.pop(p, None)
        return {"result": None, "id": rid}
    if method == "LIST_SUBSCRIPTIONS":
        if params:
            return _err(2, "Invalid request: too many parameters", rid)
        return {"result": list(state.subs), "id": rid}
    if not params or not isinstance(params[0], str):
        return _err(2, "Invalid request: property name must be a string", rid)
    if params[0] != "combined":
        return _err(0, "Unknown property", rid)
    if method == "GET_PROPERTY":
        return {"result": state.combined, "id": rid}
    if len(params) != 2 or not isinstance(params[1], bool):
        return _err(1, "Invalid value type: expected Boolean", rid)
    state.combined = params[1]
    return {"result": None, "id": rid}


def fmt(d: Decimal) -> str:
    return f"{d:.8f}"


def _levels(levels: Iterable[Level], n: int) -> list[list[str]]:
    return [[fmt(lv.price), fmt(lv.size)] for lv in list(levels)[:n]]


class BinanceFeed:
    """Market events → (stream name, payload) pairs, with Binance's per-symbol ids. No I/O."""

    def __init__(self, symbols: dict[str, str]) -> None:
        self.symbols = symbols  # our symbol -> Binance symbol
        self.update_id: dict[str, int] = {}
        self.trade_id: dict[str, int] = {}
        self.agg_id: dict[str, int] = {}

    def _next(self, table: dict[str, int], sym: str, start: int) -> int:
        table[sym] = table.get(sym, start) + 1
        return table[sym]

    def frames(self, ev: Event, wanted: Callable[[str], bool] = lambda _: True) -> list[tuple[str, dict[str, Any]]]:
        sym = self.symbols.get(ev.symbol, ev.symbol)
        low = sym.lower()
        out: list[tuple[str, dict[str, Any]]] = []
        if isinstance(ev, QuoteEvent):
            u = self._next(self.update_id, sym, 400900000)
            name = f"{low}@bookTicker"
            if wanted(name):
                out.append((name, {"u": u, "s": sym, "b": fmt(ev.bid), "B": fmt(ev.bid_sz),
                                   "a": fmt(ev.ask), "A": fmt(ev.ask_sz)}))
        elif isinstance(ev, BookEvent):
            u = self._next(self.update_id, sym, 400900000)
            for n in (5, 10, 20):
                names = [f"{low}@depth{n}@100ms"]
                if ev.index % 10 == 0:
                    names.append(f"{low}@depth{n}")
                for name in names:
                    if wanted(name):
                        out.append((name, {"lastUpdateId": u, "bids": _levels(ev.bids, n),
                                           "asks": _levels(ev.asks, n)}))
        elif isinstance(ev, TradeEvent):
            t0 = self.trade_id.get(sym, 3735683000)
            self.trade_id[sym] = t0 + ev.count
            a = self._next(self.agg_id, sym, 1200000)
            maker_buyer = ev.side == "sell"
            name = f"{low}@trade"
            if wanted(name):
                # One aggregated taker order of `count` fills shows as `count` raw trades: keep it one.
                out.append((name, {"e": "trade", "E": ev.ts_ms + 1, "s": sym, "t": t0 + 1, "p": fmt(ev.price),
                                   "q": fmt(ev.size), "T": ev.ts_ms, "m": maker_buyer, "M": True}))
            name = f"{low}@aggTrade"
            if wanted(name):
                out.append((name, {"e": "aggTrade", "E": ev.ts_ms + 1, "s": sym, "a": a, "p": fmt(ev.price),
                                   "q": fmt(ev.size), "f": t0 + 1, "l": t0 + ev.count, "T": ev.ts_ms,
                                   "m": maker_buyer, "M": True}))
        return out


def wrap(name: str, raw: bytes) -> bytes:
    return b'{"stream":"' + name.encode() + b'","data":' + raw + b"}"


class BinanceServer(MarketServer[str]):
    name = "binance"
    TRUNCATED = b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCU'

    def __init__(self, symbols: dict[str, str], host: str = "127.0.0.1", port: int = 0,
                 ping_interval: float = 20.0, pong_timeout: float = 60.0, msg_limit: int = 5,
                 model: MarketModel | None = None) -> None:
        super().__init__(symbols, host, port, model)
        self.feed = BinanceFeed(symbols)
        self.known = {s.lower() for s in symbols.values()}
        self.extra_streams: set[str] = set()  # stream names present in replay files
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.msg_limit = msg_limit
        self.pongs_received = 0
        self.pings_received = 0
        self.pings_sent = 0
        self.rate_limit_closes = 0

    # --- protocol ---------------------------------------------------------------------------------

    def valid_stream(self, name: str) -> bool:
        if name in self.extra_streams:
            return True
        key = parse_stream(name)
        return key is not None and key.symbol.lower() in self.known

    def route(self, request: Request) -> tuple[object, Response | None]:
        r = parse_path(request.path, self.valid_stream)
        if isinstance(r, Route):
            return r, None
        return None, refusal(*r)

    def on_open(self, conn: Conn[str]) -> None:
        route = conn.ws.route
        assert isinstance(route, Route)
        conn.combined = route.combined
        for name in route.streams:
            self.subscribe(conn, name)

    async def on_message(self, conn: Conn[str], msg: Data) -> None:
        state = SubState(dict(conn.subs), conn.combined)
        reply = apply_request(msg, state, self.valid_stream)
        for name in list(conn.subs):
            if name not in state.subs:
                self.unsubscribe(conn, name)
        for name in state.subs:
            if name not in conn.subs:
                self.subscribe(conn, name)
        conn.combined = state.combined
        self.enqueue(conn, orjson.dumps(reply))

    def on_frame(self, conn: Conn[str], opcode: Opcode) -> None:
        if opcode is Opcode.PONG:
            self.pongs_received += 1
        elif opcode is Opcode.PING:
            self.pings_received += 1
        if opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG):
            now = conn.loop.time()
            conn.recv_times.append(now)
            while conn.recv_times and conn.recv_times[0] <= now - 1.0:
                conn.recv_times.popleft()
            if len(conn.recv_times) > self.msg_limit and not conn.closing:
                self.rate_limit_closes += 1
                self.close_conn(conn, 1008, "Too many requests")

    def conn_tasks(self, conn: Conn[str]) -> Iterable[Coroutine[Any, Any, None]]:
        return (self._keepalive(conn),)

    async def _keepalive(self, conn: Conn[str]) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if conn.silent or conn.closing:
                continue
            try:
                waiter = await conn.ws.ping(str(now_ms()))
                self.pings_sent += 1
                await asyncio.wait_for(asyncio.shield(waiter), self.pong_timeout)
            except TimeoutError:
                if not conn.silent:
                    self.close_conn(conn, 1008, "Pong timeout")
                    return
            except Exception:  # noqa: BLE001 - the connection went away
                return

    # --- market data ------------------------------------------------------------------------------

    def on_event(self, ev: Event) -> None:
        for name, data in self.feed.frames(ev, lambda n: n in self.index):
            raw = orjson.dumps(data)
            self.publish(name, raw, wrap(name, raw))

    # --- faults -----------------------------------------------------------------------------------

    async def server_shutdown(self, close_after: float | None = None) -> None:
        """Send the ``serverShutdown`` event to every connection (optionally close them afterwards)."""
        self.broadcast(orjson.dumps({"e": "serverShutdown", "E": now_ms()}))
        await self.flush()
        if close_after is not None:
            await asyncio.sleep(close_after)
            await self.drop_all(1001, "Server shutdown")

    def bad_quote(self, kind: str, theirs: str, bid: Decimal, ask: Decimal) -> None:
        name = f"{theirs.lower()}@bookTicker"
        if kind == "nan":
            raw = orjson.dumps({"u": 1, "s": theirs, "b": "NaN", "B": "1.00000000", "a": "NaN", "A": "1.00000000"})
        elif kind == "nan_literal":
            raw = b'{"u":1,"s":"' + theirs.encode() + b'","b":NaN,"B":"1.0","a":NaN,"A":"1.0"}'
        else:
            raw = orjson.dumps({"u": 1, "s": theirs, "b": fmt(bid), "B": "-1.50000000", "a": fmt(ask),
                                "A": "-2.00000000"})
        self.publish(name, raw, wrap(name, raw))
