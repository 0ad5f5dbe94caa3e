"""The asyncio shell shared by both simulated exchanges: connections, fan-out, faults and counters.

Each connection has a bounded send queue drained by its own writer task, so one slow client never stalls
the market (frames for a full queue are dropped and counted). Subscriptions are indexed by key (a Binance
stream name, an OKX ``(channel, instId)``) so publishing one frame costs one lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
import time
from collections import defaultdict, deque
from collections.abc import Callable, Coroutine, Hashable, Iterable
from decimal import Decimal
from http import HTTPStatus
from typing import Any, Generic, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event as WsEvent

from simulator.market import BookEvent, Event, Level, MarketModel, QuoteEvent, TradeEvent, book_with_top

log = logging.getLogger("simulator")

QUEUE_MAX = 20000
Data = bytes | str
K = TypeVar("K", bound=Hashable)  # what a subscription is keyed by: a Binance stream name, an OKX (channel, instId)


def now_ms() -> int:
    return int(time.time() * 1000)


def refusal(status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    """An HTTP response refusing a WebSocket handshake."""
    raw = body.encode()
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(raw)))])
    return Response(status, HTTPStatus(status).phrase, headers, raw)


class SimConnection(ServerConnection):
    """A server connection that reports every incoming frame, control frames included."""

    route: object = None  # what the exchange's route() made of the handshake
    frame_hook: Callable[[Opcode], None] | None = None

    def process_event(self, event: WsEvent) -> None:
        super().process_event(event)
        if self.frame_hook is not None and isinstance(event, Frame):
            self.frame_hook(event.opcode)


class Conn(Generic[K]):
    """One client connection as the simulator sees it."""

    def __init__(self, cid: int, ws: SimConnection) -> None:
        self.id = cid
        self.ws = ws
        self.path = ws.request.path if ws.request else ""
        self.subs: dict[K, None] = {}  # ordered: LIST_SUBSCRIPTIONS answers in subscription order
        self.combined = False
        self.queue: asyncio.Queue[Data] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.loop = asyncio.get_running_loop()
        self.silent_until = 0.0
        self.last_recv = self.loop.time()
        self.last_send = self.last_recv  # last frame written to the client (OKX's idle rule counts both ways)
        self.recv_times: deque[float] = deque()
        self.closing = False
        self.dropped = 0
        self.conn_id = ""

    @property
    def silent(self) -> bool:
        return self.loop.time() < self.silent_until


class ExchangeServer(Generic[K]):
    """Base class: subclasses route the handshake, parse client messages and build frames."""

    name = "exchange"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.conns: dict[int, Conn[K]] = {}
        self.index: defaultdict[K, dict[Conn[K], None]] = defaultdict(dict)
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Condition()
        self.first_subscription = asyncio.Event()
        # Counters for tests.
        self.connection_attempts = 0
        self.connections_total = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self.messages_received = 0

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await serve(
            self._handler, self.host, self.port, process_request=self._process_request,
            create_connection=SimConnection, ping_interval=None, ping_timeout=None, compression=None,
            max_size=1 << 20, close_timeout=2,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        for t in list(self._bg):
            t.cancel()

    @property
    def base_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # --- inspection -------------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self.conns)

    def subscriptions(self) -> set[K]:
        """Every key some open connection subscribes to."""
        return {k for k, conns in self.index.items() if conns}

    def subscriptions_by_connection(self) -> list[list[K]]:
        return [list(c.subs) for c in self.conns.values()]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until ``predicate()`` is true (re-checked on every connect/subscribe change)."""
        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def wait_subscribed(self, key: K, within: float = 5.0) -> None:
        await self.wait_for(lambda: bool(self.index.get(key)), within)

    async def wait_connections(self, n: int, within: float = 5.0) -> None:
        await self.wait_for(lambda: len(self.conns) >= n, within)

    # --- hooks for subclasses ---------------------------------------------------------------------

    def route(self, request: Request) -> tuple[object, Response | None]:
        """Return (route info for on_open, or an HTTP response refusing the handshake)."""
        raise NotImplementedError

    def on_open(self, conn: Conn[K]) -> None:
        pass

    async def on_message(self, conn: Conn[K], msg: Data) -> None:
        raise NotImplementedError

    def on_frame(self, conn: Conn[K], opcode: Opcode) -> None:
        pass

    def conn_tasks(self, conn: Conn[K]) -> Iterable[Coroutine[Any, Any, None]]:
        return ()

    # --- connections ------------------------------------------------------------------------------

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        self.connection_attempts += 1
        info, refusal = self.route(request)
        if refusal is not None:
            return refusal
        assert isinstance(ws, SimConnection)
        ws.route = info
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert isinstance(ws, SimConnection)
        conn: Conn[K] = Conn(next(self._ids), ws)

        def frame_hook(opcode: Opcode) -> None:
            conn.last_recv = conn.loop.time()
            if opcode in (Opcode.TEXT, Opcode.BINARY):
                self.messages_received += 1
            self.on_frame(conn, opcode)

        ws.frame_hook = frame_hook
        self.conns[conn.id] = conn
        self.connections_total += 1
        self.on_open(conn)
        await self._notify()
        tasks = [asyncio.create_task(self._writer(conn))]
        tasks += [asyncio.create_task(c) for c in self.conn_tasks(conn)]
        try:
            async for msg in ws:
                await self.on_message(conn, msg)
        except ConnectionClosed:
            pass
        finally:
            for t in tasks:
                t.cancel()
            for key in list(conn.subs):
                self.unsubscribe(conn, key)
            self.conns.pop(conn.id, None)
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def _writer(self, conn: Conn[K]) -> None:
        q = conn.queue
        while True:
            data = await q.get()
            try:
                if conn.silent:
                    await asyncio.sleep(conn.silent_until - conn.loop.time())
                await conn.ws.send(data, text=True)
                conn.last_send = conn.loop.time()
                self.frames_sent += 1
            except ConnectionClosed:
                q.task_done()
                while not q.empty():  # let flush() return
                    q.get_nowait()
                    q.task_done()
                return
            q.task_done()

    def subscribe(self, conn: Conn[K], key: K) -> None:
        conn.subs[key] = None
        self.index[key][conn] = None
        self.first_subscription.set()
        self._spawn(self._notify())

    def unsubscribe(self, conn: Conn[K], key: K) -> None:
        conn.subs.pop(key, None)
        subs = self.index.get(key)
        if subs is not None:
            subs.pop(conn, None)
            if not subs:
                del self.index[key]

    def enqueue(self, conn: Conn[K], data: Data) -> None:
        if conn.silent or conn.closing:
            return
        try:
            conn.queue.put_nowait(data)
        except asyncio.QueueFull:
            conn.dropped += 1
            self.frames_dropped += 1

    def publish(self, key: K, raw: Data, wrapped: Data | None = None) -> int:
        """Queue a frame to every subscriber of ``key``; ``wrapped`` goes to combined-stream connections."""
        subs = self.index.get(key)
        if not subs:
            return 0
        for conn in subs:
            self.enqueue(conn, wrapped if (wrapped is not None and conn.combined) else raw)
        return len(subs)

    def broadcast(self, data: Data) -> None:
        for conn in list(self.conns.values()):
            self.enqueue(conn, data)

    async def flush(self, within: float = 5.0) -> None:
        """Wait until every queued frame has been written to its socket."""
        async with asyncio.timeout(within):
            for conn in list(self.conns.values()):
                await conn.queue.join()

    def close_conn(self, conn: Conn[K], code: int, reason: str) -> None:
        if conn.closing:
            return
        conn.closing = True
        self._spawn(conn.ws.close(code, reason))

    # --- faults -----------------------------------------------------------------------------------

    async def drop_all(self, code: int = 1000, reason: str = "") -> None:
        """Close every connection with a proper close handshake."""
        conns = list(self.conns.values())
        for c in conns:
            c.closing = True
        await asyncio.gather(*(c.ws.close(code, reason) for c in conns), return_exceptions=True)

    async def abrupt_close_all(self) -> None:
        """Reset every TCP connection without a close frame (clients see 1006)."""
        for c in list(self.conns.values()):
            c.closing = True
            transport = c.ws.transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        await asyncio.sleep(0)

    def go_silent(self, seconds: float) -> None:
        """Keep every socket open but send nothing and read nothing (so pings go unanswered) for a while."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        for c in list(self.conns.values()):
            c.silent_until = until
            with contextlib.suppress(Exception):
                c.ws.transport.pause_reading()
            loop.call_later(seconds, self._wake, c)

    def _wake(self, conn: Conn[K]) -> None:
        conn.last_recv = conn.loop.time()
        with contextlib.suppress(Exception):
            conn.ws.transport.resume_reading()

    async def send_raw(self, data: Data, key: K | None = None) -> None:
        """Send exactly ``data`` to the subscribers of ``key`` (every connection when None)."""
        if key is None:
            self.broadcast(data)
        else:
            self.publish(key, data)
        await self.flush()


class MarketServer(ExchangeServer[K]):
    """An exchange fed by the market model: test controls shared by both exchanges.

    Subclasses turn events into frames (``on_event``) and build the malformed quote frames (``bad_quote``).
    """

    TRUNCATED: bytes = b""  # a frame of this exchange cut in the middle

    def __init__(self, symbols: dict[str, str], host: str = "127.0.0.1", port: int = 0,
                 model: MarketModel | None = None) -> None:
        super().__init__(host, port)
        self.symbols = symbols  # our symbol -> the exchange's
        self.model = model

    def on_event(self, ev: Event) -> None:
        raise NotImplementedError

    def bad_quote(self, kind: str, theirs: str, bid: Decimal, ask: Decimal) -> None:
        """Publish a best bid/ask frame of ``kind`` (nan | nan_literal | negative) to its subscribers."""
        raise NotImplementedError

    def _sym(self, symbol: str) -> tuple[str, str]:
        """Accept our symbol or the exchange's; return (ours, theirs)."""
        for ours, theirs in self.symbols.items():
            if symbol.upper() in (ours, theirs):
                return ours, theirs
        raise KeyError(f"unknown symbol {symbol}")

    def pause(self, symbol: str) -> None:
        if self.model is not None:
            self.model.pause(self.name, self._sym(symbol)[0])

    def resume(self, symbol: str) -> None:
        if self.model is not None:
            self.model.resume(self.name, self._sym(symbol)[0])

    async def push_bbo(self, symbol: str, bid: str, ask: str, bid_qty: str = "1", ask_qty: str = "1",
                       book: bool = True) -> None:
        """Send the best bid/ask frames (and, with ``book``, depth frames whose best levels are these) now."""
        ours, _ = self._sym(symbol)
        q = QuoteEvent(self.name, ours, now_ms(), Decimal(bid), Decimal(bid_qty), Decimal(ask), Decimal(ask_qty))
        if self.model is not None:
            self.model.set_top(self.name, ours, q.bid, q.bid_sz, q.ask, q.ask_sz)
        self.on_event(q)
        if book:
            self.on_event(book_with_top(self.model, self.name, q))
        await self.flush()

    async def push_book(self, symbol: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        ours, _ = self._sym(symbol)
        ev = BookEvent(self.name, ours, now_ms(), tuple(Level(Decimal(p), Decimal(s)) for p, s in bids),
                       tuple(Level(Decimal(p), Decimal(s)) for p, s in asks), index=0)
        self.on_event(ev)
        await self.flush()

    async def push_trade(self, symbol: str, price: str, qty: str, side: str = "buy") -> None:
        """``side`` is the taker's."""
        ours, _ = self._sym(symbol)
        self.on_event(TradeEvent(self.name, ours, now_ms(), Decimal(price), Decimal(qty),
                                 "sell" if side == "sell" else "buy"))
        await self.flush()

    async def send_crossed_book(self, symbol: str) -> None:
        """Best bid/ask and depth frames whose best bid is two ticks above the best ask."""
        ours, _ = self._sym(symbol)
        q = self.model.quote(self.name, ours) if self.model else None
        ask = q.ask if q else Decimal("100")
        tick = self.model.spec(ours).tick if self.model else Decimal("0.01")
        await self.push_bbo(ours, str(ask + 2 * tick), str(ask), book=True)

    async def send_garbage(self, kind: str = "non_json", symbol: str | None = None) -> None:
        """kind: non_json | truncated | nan | nan_literal | negative | empty.

        Shaped kinds go to the symbol's best bid/ask subscribers (all connections get non-JSON ones).
        """
        if kind == "non_json":
            self.broadcast(b"this is not json <html>")
        elif kind == "empty":
            self.broadcast(b"")
        elif kind == "truncated":
            self.broadcast(self.TRUNCATED)
        elif kind in ("nan", "nan_literal", "negative"):
            ours, theirs = self._sym(symbol or next(iter(self.symbols)))
            q = self.model.quote(self.name, ours) if self.model else None
            bid, ask = (q.bid, q.ask) if q else (Decimal("1"), Decimal("1.0001"))
            self.bad_quote(kind, theirs, bid, ask)
        else:
            raise ValueError(f"unknown garbage kind {kind!r}")
        await self.flush()
