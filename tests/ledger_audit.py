"""A full audit of users' ledgers straight from Redis, for tests that hammer the system and then ask "does it hold?".

    report = await audit(r, "alice", deposits={"USDT": Decimal(5000)}, acked={"t1", "t2"})

Checks, for each user:
- every acknowledged ``token_id`` exists; every indexed token has exactly one order, in one known status; the open
  index holds exactly the open orders; closed orders lock nothing;
- ``total = available + reserved``, nothing negative, ``reserved`` = what the open orders lock
  (``ledger.check_invariants``);
- fills: no ``fill_id`` twice, each belongs to an indexed order of the same symbol and side, and an order's fills
  add up to its ``filled_quantity``, ``filled_notional`` and ``fee``; a ``filled`` order is filled in full;
- conservation: deposits − what fills paid + what they received − fees = each asset's total.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
import redis.asyncio as aioredis

from shared import ledger, ledger_store, names
from shared.ledger import Fill, Order
from shared.redis_conn import connect_any
from tests.servers import redis_client

STATUSES = {"open", "filled", "cancelled", "expired", "rejected"}
ZERO = Decimal(0)


@dataclass
class Report:
    user_id: str
    orders: dict[str, Order] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    totals: dict[str, Decimal] = field(default_factory=dict)

    def by_status(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.orders.values():
            out[o.status] = out.get(o.status, 0) + 1
        return out


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _assets(o: Order) -> tuple[str, str]:
    """(base, quote) of an order: a buy locks quote and pays its fee in base, a sell the other way round."""
    return (o.fee_asset, o.reserve_asset) if o.side == "buy" else (o.reserve_asset, o.fee_asset)


async def audit(r: aioredis.Redis, user_id: str, deposits: Mapping[str, Decimal],
                acked: Iterable[str] = ()) -> Report:
    rep = Report(user_id)
    u = user_id
    index = [_s(t) for t in await r.zrange(names.orders_index_key(u), 0, -1)]
    assert len(index) == len(set(index)), f"{u}: token indexed twice"
    raws = await r.mget([names.order_key(u, t) for t in index]) if index else []
    for token, raw in zip(index, raws, strict=True):
        assert raw is not None, f"{u}: indexed order {token!r} has no record"
        o = Order.from_dict(orjson.loads(raw))
        assert o.token_id == token and o.user_id == u, f"{u}: order {token!r} stored under the wrong key"
        assert o.status in STATUSES, f"{u}: {token!r} in unknown status {o.status!r}"
        assert o.filled_quantity <= o.quantity, f"{u}: {token!r} overfilled"
        if o.status == "filled":
            assert o.filled_quantity == o.quantity, f"{u}: {token!r} filled with {o.filled_quantity}/{o.quantity}"
        if not o.is_open:
            assert o.reserved == 0, f"{u}: closed order {token!r} still locks {o.reserved}"
        rep.orders[token] = o
    missing = set(acked) - set(rep.orders)
    assert not missing, f"{u}: acknowledged orders lost: {sorted(missing)[:10]}"

    open_idx = {_s(t) for t in await r.zrange(names.open_orders_key(u), 0, -1)}
    open_orders = {t for t, o in rep.orders.items() if o.is_open}
    assert open_idx == open_orders, (f"{u}: open index {sorted(open_idx - open_orders)[:5]} vs open orders "
                                     f"{sorted(open_orders - open_idx)[:5]}")

    acct = await ledger_store.get_account(r, u)
    ledger.check_invariants(acct, [rep.orders[t] for t in open_orders])
    for asset, b in acct.balances.items():
        assert b.available == b.total - b.reserved and b.available >= 0, f"{u}: {asset} {b}"
        rep.totals[asset] = b.total

    seen: set[str] = set()
    per_order: dict[str, tuple[Decimal, Decimal, Decimal]] = {}
    expected = {a: Decimal(v) for a, v in deposits.items()}
    for raw in await r.lrange(names.fills_key(u), 0, -1):
        f = Fill.from_dict(orjson.loads(raw))
        assert f.fill_id not in seen, f"{u}: fill {f.fill_id} applied twice"
        seen.add(f.fill_id)
        o = rep.orders.get(f.token_id)
        assert o is not None, f"{u}: fill {f.fill_id} of unknown order {f.token_id!r}"
        assert (f.symbol, f.side, f.fee_asset) == (o.symbol, o.side, o.fee_asset), f"{u}: fill {f.fill_id} mismatch"
        q, n, fee = per_order.get(f.token_id, (ZERO, ZERO, ZERO))
        notional = f.price * f.quantity
        per_order[f.token_id] = (q + f.quantity, n + notional, fee + f.fee)
        base, quote = _assets(o)
        if f.side == "buy":
            expected[quote] = expected.get(quote, ZERO) - notional
            expected[base] = expected.get(base, ZERO) + f.quantity - f.fee
        else:
            expected[base] = expected.get(base, ZERO) - f.quantity
            expected[quote] = expected.get(quote, ZERO) + notional - f.fee
        rep.fills.append(f)
    for token, o in rep.orders.items():
        q, n, fee = per_order.get(token, (ZERO, ZERO, ZERO))
        assert (q, n, fee) == (o.filled_quantity, o.filled_notional, o.fee), (
            f"{u}: {token!r} fills add up to {q}/{n}/{fee}, order says "
            f"{o.filled_quantity}/{o.filled_notional}/{o.fee}")

    for asset in set(expected) | set(rep.totals):
        assert expected.get(asset, ZERO) == rep.totals.get(asset, ZERO), (
            f"{u}: {asset} total {rep.totals.get(asset, ZERO)} but deposits and fills give {expected.get(asset, ZERO)}")
    return rep


async def audit_users(redis_url: str, deposits: Mapping[str, Mapping[str, Decimal]],
                      acked: Mapping[str, Iterable[str]] | None = None, *, cluster: bool | None = None,
                      ) -> dict[str, Report]:
    """``cluster``: the URL names a cluster (default: the cluster pass's setting)."""
    r = redis_client(redis_url) if cluster is None else connect_any(redis_url, cluster)
    try:
        return {u: await audit(r, u, d, (acked or {}).get(u, ())) for u, d in deposits.items()}
    finally:
        await r.aclose()


def audit_users_sync(redis_url: str, deposits: Mapping[str, Mapping[str, Decimal]],
                     acked: Mapping[str, Iterable[str]] | None = None) -> dict[str, Report]:
    return asyncio.run(audit_users(redis_url, deposits, acked))
