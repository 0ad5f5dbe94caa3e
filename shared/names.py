"""Every Redis channel and key name, built here and nowhere else.

Channels (pub/sub, payloads are JSON from ``shared.schema``)::

    md:bbo:<exchange>:<SYMBOL>     best bid/offer of one exchange (bookTicker / bbo-tbt)
    md:book:<exchange>:<SYMBOL>    top levels of one exchange (depth10 / books5)
    md:trade:<exchange>:<SYMBOL>   trades of one exchange
    md:status:<exchange>           feed state changes (up / stale / down)
    orders:events:<user_id>        a user's order events

Keys::

    md:last:bbo:<exchange>:<SYMBOL>   latest bbo message (string, JSON)
    md:last:book:<exchange>:<SYMBOL>  latest book message (string, JSON)
    md:feed:<exchange>                hash: state, last message time, counters
"""

from __future__ import annotations

KINDS = ("bbo", "book", "trade")
PREFIX_MD = "md"


def md_channel(kind: str, exchange: str, symbol: str) -> str:
    return f"{PREFIX_MD}:{kind}:{exchange}:{symbol}"


def md_last_key(kind: str, exchange: str, symbol: str) -> str:
    return f"{PREFIX_MD}:last:{kind}:{exchange}:{symbol}"


def status_channel(exchange: str) -> str:
    return f"{PREFIX_MD}:status:{exchange}"


def status_key(exchange: str) -> str:
    return f"{PREFIX_MD}:feed:{exchange}"


def md_pattern(kind: str = "*", exchange: str = "*", symbol: str = "*") -> str:
    return f"{PREFIX_MD}:{kind}:{exchange}:{symbol}"


def user_events_channel(user_id: str) -> str:
    return f"orders:events:{user_id}"
