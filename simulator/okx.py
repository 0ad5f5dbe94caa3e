"""OKX v5 public WebSocket: subscribe/unsubscribe, errors, ping/pong, push frames, and the server.

Pure parts first (``apply_request``, ``OkxFeed``), then the asyncio ``OkxServer`` on ``/ws/v5/public``.

    -> {"id":"1","op":"subscribe","args":[{"channel":"bbo-tbt","instId":"BTC-USDT"}]}
    <- {"id":"1","event":"subscribe","arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"connId":"a4d3ae55"}
    <- {"arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"data":[{"asks":[["60000.1","1.2","0","3"]],
        "bids":[["60000","0.5","0","1"]],"ts":"1723161255343","seqId":1001}]}
    -> ping   <- pong                (text frames)
    errors: {"event":"error","code":"60012","msg":"Invalid request: ...","connId":"..."}
            60012 bad JSON / bad shape, 60019 unknown op, 60018 unknown channel or instId
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.http11 import Request, Response

from simulator.market import BookEvent, Event, Level, MarketModel, QuoteEvent, TradeEvent
from simulator.server import Conn, Data, MarketServer, now_ms, refusal

PATH = "/ws/v5/public"
CHANNELS = ("bbo-tbt", "books5", "trades", "tickers")
Key = tuple[str, str]  # (channel, instId)

NOTICE_MSG = "The connection will soon be closed for a service upgrade. Please reconnect."


@dataclass(slots=True)
class SubState:
    subs: dict[Key, None] = field(default_factory=dict)


def _error(code: str, msg: str, conn_id: str, rid: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(rid, str) and rid:
        out["id"] = rid
    out.update({"event": "error", "code": code, "msg": msg, "connId": conn_id})
    return out


def _text(msg: Data) -> str:
    return msg if isinstance(msg, str) else bytes(msg).decode("utf-8", "replace")


def apply_request(msg: Data, state: SubState, valid: Callable[[str, str], bool], conn_id: str) -> list[dict[str, Any]]:
    """One client request → the replies (one ack per arg, or one error); ``state`` changes only on success."""
    text = _text(msg)
    try:
        req = orjson.loads(text)
    except orjson.JSONDecodeError:
        return [_error("60012", f"Invalid request: {text}", conn_id)]
    if not isinstance(req, dict):
        return [_error("60012", f"Invalid request: {text}", conn_id)]
    rid = req.get("id")
    if rid is not None and not (isinstance(rid, str) and rid.isalnum() and len(rid) <= 32):
        return [_error("60012", f"Invalid request: {text}", conn_id)]
    op = req.get("op")
    if op not in ("subscribe", "unsubscribe"):
        if not isinstance(op, str):
            return [_error("60012", f"Invalid request: {text}", conn_id, rid)]
        return [_error("60019", f"Invalid op: {op}", conn_id, rid)]
    args = req.get("args")
    if not isinstance(args, list) or not args:
        return [_error("60012", f"Invalid request: {text}", conn_id, rid)]
    keys: list[Key] = []
    for arg in args:
        if not isinstance(arg, dict) or not isinstance(arg.get("channel"), str):
            return [_error("60012", f"Invalid request: {text}", conn_id, rid)]
        channel, inst = arg["channel"], arg.get("instId")
        if not isinstance(inst, str) or not valid(channel, inst):
            return [_error("60018", f"Wrong URL or channel:{channel},instId:{inst} doesn't exist. Please use "
                                    "the correct URL, channel and parameters referring to API document.",
                           conn_id, rid)]
        keys.append((channel, inst))
    replies = []
    for channel, inst in keys:
        if op == "subscribe":
            state.subs[(channel, inst)] = None
        else:
            state.subs.pop((channel, inst), None)
        reply: dict[str, Any] = {"id": rid} if rid else {}
        reply.update({"event": op, "arg": {"channel": channel, "instId": inst}, "connId": conn_id})
        replies.append(reply)
    return replies


def fmt(d: Decimal) -> str:
    return format(d.normalize(), "f")


def _lv(lv: Level) -> list[str]:
    return [fmt(lv.price), fmt(lv.size), "0", str(lv.orders)]


@dataclass(slots=True)
class _Day:
    open: Decimal
    high: Decimal
    low: Decimal
    last: Decimal
    last_sz: Decimal = Decimal(0)
    vol: Decimal = Decimal(0)
    vol_ccy: Decimal = Decimal(0)


class OkxFeed:
    """Market events → ((channel, instId), push frame) pairs with OKX's ids. No I/O."""

    def __init__(self, symbols: dict[str, str]) -> None:
        self.symbols = symbols  # our symbol -> instId
        self.seq: dict[str, int] = {}
        self.trade_seq: dict[str, int] = {}
        self.trade_id: dict[str, int] = {}
        self.day: dict[str, _Day] = {}
        self.top: dict[str, QuoteEvent] = {}

    def _next(self, table: dict[str, int], inst: str, start: int) -> int:
        table[inst] = table.get(inst, start) + 1
        return table[inst]

    def frames(self, ev: Event, wanted: Callable[[Key], bool] = lambda _: True) -> list[tuple[Key, dict[str, Any]]]:
        inst = self.symbols.get(ev.symbol, ev.symbol)
        ts = str(ev.ts_ms)
        out: list[tuple[Key, dict[str, Any]]] = []

        def push(channel: str, data: dict[str, Any]) -> None:
            key = (channel, inst)
            if wanted(key):
                out.append((key, {"arg": {"channel": channel, "instId": inst}, "data": [data]}))

        if isinstance(ev, QuoteEvent):
            seq = self._next(self.seq, inst, 79706750000)
            self.top[inst] = ev
            push("bbo-tbt", {"asks": [[fmt(ev.ask), fmt(ev.ask_sz), "0", "1"]],
                             "bids": [[fmt(ev.bid), fmt(ev.bid_sz), "0", "1"]], "ts": ts, "seqId": seq})
            push("tickers", self._ticker(inst, ev, ts))
        elif isinstance(ev, BookEvent):
            seq = self._next(self.seq, inst, 79706750000)
            push("books5", {"asks": [_lv(lv) for lv in ev.asks[:5]], "bids": [_lv(lv) for lv in ev.bids[:5]],
                            "instId": inst, "ts": ts, "seqId": seq})
        elif isinstance(ev, TradeEvent):
            seq = self._next(self.trade_seq, inst, 1234000)
            tid = self._next(self.trade_id, inst, 130639000)
            day = self.day.get(inst)
            if day is None:
                day = self.day[inst] = _Day(ev.price, ev.price, ev.price, ev.price)
            day.last, day.last_sz = ev.price, ev.size
            day.high, day.low = max(day.high, ev.price), min(day.low, ev.price)
            day.vol += ev.size
            day.vol_ccy += ev.size * ev.price
            push("trades", {"instId": inst, "tradeId": str(tid), "px": fmt(ev.price), "sz": fmt(ev.size),
                            "side": ev.side, "ts": ts, "count": str(ev.count), "source": "0", "seqId": seq})
        return out

    def _ticker(self, inst: str, q: QuoteEvent, ts: str) -> dict[str, Any]:
        mid = (q.bid + q.ask) / 2
        day = self.day.get(inst) or _Day(mid, mid, mid, q.bid)
        return {"instType": "SPOT", "instId": inst, "last": fmt(day.last), "lastSz": fmt(day.last_sz),
                "askPx": fmt(q.ask), "askSz": fmt(q.ask_sz), "bidPx": fmt(q.bid), "bidSz": fmt(q.bid_sz),
                "open24h": fmt(day.open), "high24h": fmt(day.high), "low24h": fmt(day.low),
                "volCcy24h": fmt(day.vol_ccy), "vol24h": fmt(day.vol), "ts": ts,
                "sodUtc0": fmt(day.open), "sodUtc8": fmt(day.open)}


class OkxServer(MarketServer[Key]):
    name = "okx"
    TRUNCATED = b'{"arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"data":[{"asks":[["6'

    def __init__(self, symbols: dict[str, str], host: str = "127.0.0.1", port: int = 0,
                 idle_timeout: float = 30.0, model: MarketModel | None = None, seed: int = 0,
                 connect_limit: int = 0) -> None:
        """``connect_limit``: refuse handshakes beyond this many per second with HTTP 429, as OKX limits
        connection requests to 3/s per IP (0: no limit)."""
        super().__init__(symbols, host, port, model)
        self.connect_limit = connect_limit
        self._handshakes: deque[float] = deque()
        self.connect_refusals = 0
        self.requests_by_conn: dict[int, int] = {}  # subscribe/unsubscribe requests per connection id
        self.feed = OkxFeed(symbols)
        self.known = set(symbols.values())
        self.extra_args: set[Key] = set()  # (channel, instId) present in replay files
        self.idle_timeout = idle_timeout
        self.pings_received = 0
        self.idle_closes = 0
        self._rng = random.Random(seed ^ 0x0C)

    @property
    def url(self) -> str:
        return self.base_url + PATH

    def valid_arg(self, channel: str, inst: str) -> bool:
        return (channel in CHANNELS and inst in self.known) or (channel, inst) in self.extra_args

    def route(self, request: Request) -> tuple[object, Response | None]:
        if urlsplit(request.path).path.rstrip("/") != PATH:
            return None, refusal(404, "Not Found", "text/plain")
        if self.connect_limit:
            now = time.monotonic()
            while self._handshakes and self._handshakes[0] <= now - 1.0:
                self._handshakes.popleft()
            if len(self._handshakes) >= self.connect_limit:
                self.connect_refusals += 1
                return None, refusal(429, "Too Many Requests", "text/plain")
            self._handshakes.append(now)
        return PATH, None

    def on_open(self, conn: Conn[Key]) -> None:
        conn.conn_id = f"{self._rng.getrandbits(32):08x}"

    async def on_message(self, conn: Conn[Key], msg: Data) -> None:
        if msg == "ping":
            self.pings_received += 1
            self.enqueue(conn, b"pong")
            return
        self.requests_by_conn[conn.id] = self.requests_by_conn.get(conn.id, 0) + 1
        state = SubState(dict(conn.subs))
        replies = apply_request(msg, state, self.valid_arg, conn.conn_id)
        for key in list(conn.subs):
            if key not in state.subs:
                self.unsubscribe(conn, key)
        for key in state.subs:
            if key not in conn.subs:
                self.subscribe(conn, key)
        for r in replies:
            self.enqueue(conn, orjson.dumps(r))

    def conn_tasks(self, conn: Conn[Key]) -> Iterable[Coroutine[Any, Any, None]]:
        return (self._idle_watch(conn),)

    async def _idle_watch(self, conn: Conn[Key]) -> None:
        step = min(1.0, self.idle_timeout / 4)
        while True:
            await asyncio.sleep(step)
            if conn.silent or conn.closing:
                continue
            # OKX drops a connection when no data was pushed to it for 30 s; a client "ping" is answered
            # with a pushed "pong". A busy subscription therefore never needs a ping (OKX's own advice:
            # ping only after N < 30 s without receiving anything).
            if conn.loop.time() - max(conn.last_recv, conn.last_send) >= self.idle_timeout:
                self.idle_closes += 1
                # The close frame goes out even if the send queue is full.
                conn.closing = True
                await conn.ws.close(4004, f"No data received in {self.idle_timeout:g}s")
                return

    # --- market data ------------------------------------------------------------------------------

    def on_event(self, ev: Event) -> None:
        for key, frame in self.feed.frames(ev, lambda k: k in self.index):
            self.publish(key, orjson.dumps(frame))

    # --- faults -----------------------------------------------------------------------------------

    async def send_notice(self, code: str = "64008", msg: str = NOTICE_MSG, close_after: float | None = None) -> None:
        for conn in list(self.conns.values()):
            self.enqueue(conn, orjson.dumps({"event": "notice", "code": code, "msg": msg, "connId": conn.conn_id}))
        await self.flush()
        if close_after is not None:
            await asyncio.sleep(close_after)
            await self.drop_all(1001, "Service upgrade")

    def bad_quote(self, kind: str, theirs: str, bid: Decimal, ask: Decimal) -> None:
        arg = {"channel": "bbo-tbt", "instId": theirs}
        ts = str(now_ms())
        if kind == "nan":
            raw = orjson.dumps({"arg": arg, "data": [{"asks": [["NaN", "1", "0", "1"]], "bids": [["NaN", "1", "0", "1"]],
                                                      "ts": ts, "seqId": 1}]})
        elif kind == "nan_literal":
            raw = (b'{"arg":' + orjson.dumps(arg) + b',"data":[{"asks":[[NaN,"1","0","1"]],'
                   b'"bids":[[NaN,"1","0","1"]],"ts":"' + ts.encode() + b'","seqId":1}]}')
        else:
            raw = orjson.dumps({"arg": arg, "data": [{"asks": [[fmt(ask), "-2", "0", "1"]],
                                                      "bids": [[fmt(bid), "-1.5", "0", "1"]], "ts": ts, "seqId": 1}]})
        self.publish(("bbo-tbt", theirs), raw)
