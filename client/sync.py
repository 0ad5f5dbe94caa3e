"""Blocking wrapper for scripts and notebooks: the async client runs on a private event loop thread.

    with SyncClient("http://127.0.0.1:8000") as client:
        client.login("alice", "correct horse battery")
        print(client.balance().total)
        with client.stream() as ws:
            for touch in ws.best_touch("BTCUSDT", count=3):
                print(touch.bid_px, touch.ask_px)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, Generic, TypeVar

from client.models import (
    ApiKey,
    Balance,
    BestTouch,
    Book,
    Ewma,
    Info,
    Kline,
    Order,
    OrderEvent,
    Page,
    Resync,
    Trade,
    User,
)
from client.sdk import API_KEY_ENV, Number, SimpleRouterClient, Stream, Subscription

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="simple-router-client", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class SyncClient:
    """The same methods as ``SimpleRouterClient``, blocking."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, token: str | None = None,
                 api_key: str | None = None, timeout: float = 10.0) -> None:
        self._loop = _Loop()
        self.aio = SimpleRouterClient(base_url, token=token, api_key=api_key, timeout=timeout)

    @classmethod
    def from_env(cls, base_url: str = "http://127.0.0.1:8000", **kw: Any) -> SyncClient:
        """A client with the API key of ``SR_API_KEY`` (none when unset: log in then)."""
        return cls(base_url, api_key=os.environ.get(API_KEY_ENV) or None, **kw)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run(self.aio.aclose(), 5)
        self._loop.stop()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    @property
    def token(self) -> str | None:
        return self.aio.token

    def register(self, username: str, password: str) -> User:
        return self._run(self.aio.register(username, password))

    def login(self, username: str, password: str) -> str:
        return self._run(self.aio.login(username, password))

    def me(self) -> User:
        return self._run(self.aio.me())

    def logout(self) -> None:
        self._run(self.aio.logout())

    def change_password(self, current: str, new: str) -> str:
        return self._run(self.aio.change_password(current, new))

    def create_api_key(self, name: str, scopes: tuple[str, ...] | list[str] = ("read",), *,
                       expires_in_s: int | None = None) -> ApiKey:
        return self._run(self.aio.create_api_key(name, scopes, expires_in_s=expires_in_s))

    def api_keys(self) -> list[ApiKey]:
        return self._run(self.aio.api_keys())

    def delete_api_key(self, key_id: str) -> None:
        self._run(self.aio.delete_api_key(key_id))

    def info(self) -> Info:
        return self._run(self.aio.info())

    def deposit(self, asset: str, amount: Number) -> Balance:
        return self._run(self.aio.deposit(asset, amount))

    def balance(self) -> Balance:
        return self._run(self.aio.balance())

    def place_order(self, token_id: str, symbol: str, side: str, quantity: Number, price: Number | None = None,
                    *, type: str = "limit") -> Order:
        return self._run(self.aio.place_order(token_id, symbol, side, quantity, price, type=type))

    def get_order(self, token_id: str) -> Order:
        return self._run(self.aio.get_order(token_id))

    def list_orders(self, status: str | None = None, *, limit: int = 100, offset: int = 0) -> Page:
        return self._run(self.aio.list_orders(status, limit=limit, offset=offset))

    def cancel_order(self, token_id: str) -> Order:
        return self._run(self.aio.cancel_order(token_id))

    def modify_order(self, token_id: str, *, price: Number | None = None, quantity: Number | None = None) -> Order:
        return self._run(self.aio.modify_order(token_id, price=price, quantity=quantity))

    def fills(self, *, limit: int = 100, offset: int = 0) -> Page:
        return self._run(self.aio.fills(limit=limit, offset=offset))

    def wait_order(self, token_id: str, *, timeout: float = 10.0) -> Order:
        return self._run(self.aio.wait_order(token_id, timeout=timeout))

    @contextlib.contextmanager
    def stream(self) -> Iterator[SyncStream]:
        cm = self.aio.stream()
        stream = self._run(cm.__aenter__())
        try:
            yield SyncStream(self._loop, stream)
        finally:
            self._loop.run(cm.__aexit__(None, None, None), 10)


class SyncSubscription(Generic[T]):
    """Subscribed when created. Iterate it (``count`` pushes, or forever) or call ``next(timeout)``."""

    def __init__(self, loop: _Loop, sub: Subscription[T], count: int | None) -> None:
        self._loop = loop
        self.sub = loop.run(sub._start())
        self._count = count

    @property
    def topic(self) -> str | None:
        return self.sub.topic

    def next(self, timeout: float | None = 10.0) -> T:
        return self._loop.run(self.sub.next(timeout))

    def __iter__(self) -> Iterator[T]:
        n = 0
        while self._count is None or n < self._count:
            try:
                yield self._loop.run(self.sub.__anext__())
            except StopAsyncIteration:
                return
            n += 1

    def unsubscribe(self) -> None:
        self._loop.run(self.sub.unsubscribe())


class SyncStream:
    def __init__(self, loop: _Loop, stream: Stream) -> None:
        self._loop = loop
        self.aio = stream

    def subscribe(self, stream: str, symbol: str | None = None, *, exchange: str = "all",
                  interval: str | None = None, half_life: Number | None = None, depth: int | None = None,
                  count: int | None = None) -> SyncSubscription[Any]:
        return SyncSubscription(self._loop, self.aio.subscribe(stream, symbol, exchange=exchange, interval=interval,
                                                               half_life=half_life, depth=depth), count)

    def best_touch(self, symbol: str, exchange: str = "all", *, count: int | None = None) -> SyncSubscription[BestTouch]:
        return SyncSubscription(self._loop, self.aio.best_touch(symbol, exchange), count)

    def trades(self, symbol: str, exchange: str = "all", *, count: int | None = None) -> SyncSubscription[Trade]:
        return SyncSubscription(self._loop, self.aio.trades(symbol, exchange), count)

    def klines(self, symbol: str, interval: str, exchange: str = "all", *,
               count: int | None = None) -> SyncSubscription[Kline]:
        return SyncSubscription(self._loop, self.aio.klines(symbol, interval, exchange), count)

    def ewma(self, symbol: str, half_life: Number, exchange: str = "all", *,
             count: int | None = None) -> SyncSubscription[Ewma]:
        return SyncSubscription(self._loop, self.aio.ewma(symbol, half_life, exchange), count)

    def book(self, symbol: str, exchange: str = "all", depth: int = 10, *,
             count: int | None = None) -> SyncSubscription[Book]:
        return SyncSubscription(self._loop, self.aio.book(symbol, exchange, depth), count)

    def orders(self, *, count: int | None = None) -> SyncSubscription[OrderEvent | Resync]:
        return SyncSubscription(self._loop, self.aio.orders(), count)

    def place_order(self, token_id: str, symbol: str, side: str, quantity: Number, price: Number | None = None,
                    *, type: str = "limit") -> Order:
        return self._loop.run(self.aio.place_order(token_id, symbol, side, quantity, price, type=type))

    def cancel_order(self, token_id: str) -> Order:
        return self._loop.run(self.aio.cancel_order(token_id))

    def modify_order(self, token_id: str, *, price: Number | None = None, quantity: Number | None = None) -> Order:
        return self._loop.run(self.aio.modify_order(token_id, price=price, quantity=quantity))

    def ping(self) -> dict[str, Any]:
        return self._loop.run(self.aio.ping())
