"""The matcher's in-memory index of resting limit orders, per pair: buys by price desc, sells by price asc
(then oldest first). A cache of Redis, rebuilt from it on start; Redis decides, this only nominates."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from decimal import Decimal

from shared.best_touch import Touch
from shared.ledger import Order

Key = tuple[str, str]  # (user_id, token_id)
_Entry = tuple[Decimal, int, str, str]  # (sort price, created_us, user_id, token_id)


class OpenOrderIndex:
    def __init__(self) -> None:
        self._orders: dict[Key, Order] = {}
        self._entries: dict[Key, _Entry] = {}
        self._books: dict[tuple[str, str], list[_Entry]] = {}  # (symbol, side) -> sorted entries

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, key: object) -> bool:
        return key in self._orders

    def get(self, key: Key) -> Order | None:
        return self._orders.get(key)

    def orders(self) -> Iterator[Order]:
        return iter(list(self._orders.values()))

    def symbols(self) -> set[str]:
        return {sym for (sym, _), entries in self._books.items() if entries}

    def upsert(self, order: Order) -> None:
        """Index an open limit order (replacing an older version); anything else is removed."""
        key = (order.user_id, order.token_id)
        self.remove(key)
        if not order.is_open or order.type != "limit" or order.price is None:
            return
        price = -order.price if order.side == "buy" else order.price
        entry = (price, order.created_us, order.user_id, order.token_id)
        bisect.insort(self._books.setdefault((order.symbol, order.side), []), entry)
        self._orders[key] = order
        self._entries[key] = entry

    def remove(self, key: Key) -> None:
        old = self._orders.pop(key, None)
        if old is None:
            return
        entry = self._entries.pop(key)
        book = self._books[(old.symbol, old.side)]
        i = bisect.bisect_left(book, entry)
        if i < len(book) and book[i] == entry:
            del book[i]

    def clear(self) -> None:
        self._orders.clear()
        self._entries.clear()
        self._books.clear()

    def crossing(self, symbol: str, touch: Touch) -> list[Order]:
        """Resting orders the touch crosses, best priced first: buys with limit >= best ask, sells <= best bid."""
        out: list[Order] = []
        if touch.ask_px is not None:
            for price, _, user, token in self._books.get((symbol, "buy"), ()):
                if -price < touch.ask_px:
                    break
                out.append(self._orders[(user, token)])
        if touch.bid_px is not None:
            for price, _, user, token in self._books.get((symbol, "sell"), ()):
                if price > touch.bid_px:
                    break
                out.append(self._orders[(user, token)])
        return out
