"""The ledger and the matcher's intake on a Redis Cluster (3 masters): every transaction runs on its user's slot,
user events go over sharded pub/sub, and the intake (intent, transaction, confirmation) never leaves an order the
matcher does not know of, whichever step is missing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal

import orjson
import pytest
from redis.asyncio.cluster import RedisCluster

from matcher import engine, shards
from shared import ledger, ledger_store, names
from shared.errors import DomainError
from shared.ledger import PairRules
from shared.redis_conn import connect_cluster
from shared.timeutil import now_us
from tests.servers import make_settings

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def rc(cluster_url: str) -> AsyncIterator[RedisCluster]:
    r = connect_cluster(cluster_url)
    await r.initialize()
    try:
        yield r
    finally:
        await r.aclose()


def rules(cluster_url: str, symbol: str = "BTCUSDT") -> PairRules:
    settings = make_settings(cluster_url, REDIS_CLUSTER="1")
    return {p.symbol: PairRules.of(p) for p in settings.pairs}[symbol]


async def place(rc: RedisCluster, r: PairRules, user: str, token: str, price: str = "100", qty: str = "0.1",
                shards_n: int = 1) -> ledger.Order:
    return await ledger_store.place(rc, r, user_id=user, token_id=token, side="buy", type_="limit",
                                    price=Decimal(price), quantity=Decimal(qty), now_us=now_us(), shards=shards_n)


async def intake(rc: RedisCluster, shard: int = 0) -> list[shards.Entry]:
    raw = await rc.xrange(names.intake_stream(shard))
    return shards._entries(raw)


async def test_users_on_every_master_trade_with_events_over_sharded_pubsub(rc: RedisCluster, cluster_url: str) -> None:
    r = rules(cluster_url)
    users = [f"u{i}" for i in range(12)]
    masters = {rc.get_node_from_key(names.balance_key(u)).name for u in users}  # type: ignore[union-attr]
    assert len(masters) == 3, "the users should spread over the three masters"
    # A user's events channel lives in the user's slot: subscribe on that node.
    node = rc.get_node_from_key(names.user_events_channel("u0"))
    assert node is not None
    sub = rc.pubsub()
    await sub.ssubscribe(names.user_events_channel("u0"))
    try:
        for u in users:
            await ledger_store.deposit(rc, u, "USDT", Decimal("1000"))
            o = await place(rc, r, u, "t1")
            assert o.is_open and o.reserved > 0
            c = await ledger_store.cancel(rc, user_id=u, token_id="t1", now_us=now_us())
            assert c.status == "cancelled"
            acct = await ledger_store.get_account(rc, u)
            assert acct.get("USDT").total == Decimal("1000") and acct.get("USDT").reserved == 0
        kinds: list[str] = []
        deadline = time.monotonic() + 5
        while len(kinds) < 2 and time.monotonic() < deadline:
            msg = await sub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg is not None:
                kinds.append(orjson.loads(msg["data"])["event"])
        assert kinds == ["accepted", "cancelled"]
    finally:
        await sub.aclose()
    orders, total = await ledger_store.list_orders(rc, "u3", status=None, limit=10, offset=0)
    assert total == 1 and orders[0].status == "cancelled"
    found = await ledger_store.orders_by_keys(rc, [(u, "t1") for u in users] + [("nobody", "x")])
    assert [o is not None for o in found] == [True] * len(users) + [False]


async def test_intake_entries_intent_confirmation_withdrawal(rc: RedisCluster, cluster_url: str) -> None:
    r = rules(cluster_url)
    await ledger_store.deposit(rc, "ann", "USDT", Decimal("10"))
    await place(rc, r, "ann", "ok")
    with pytest.raises(DomainError) as e:
        await place(rc, r, "ann", "too-big", price="100", qty="1")  # 100 USDT > 10
    assert e.value.code == "insufficient_balance"
    await ledger_store.modify(rc, {r.symbol: r}, user_id="ann", token_id="ok", price=Decimal("90"), quantity=None,
                              now_us=now_us())
    entries = await intake(rc)
    intents = [e for e in entries if e.intent]
    assert len(intents) == 3  # place ok, place too-big, modify ok
    confirmed = {e.settles: orjson.loads(e.order) for e in entries if e.order}
    withdrawn = [e.settles for e in entries if e.settles and not e.order]
    assert set(confirmed) | set(withdrawn) == {e.id for e in intents}
    assert [orjson.loads(e.intent)["token_id"] for e in intents if e.id in withdrawn] == ["too-big"]
    assert [c["price"] for c in confirmed.values()] == ["100", "90"]


def make_matcher(cluster_url: str, rc: RedisCluster) -> engine.Matcher:
    m = engine.Matcher(make_settings(cluster_url, REDIS_CLUSTER="1"), rc)
    m.leases.held.add(0)
    return m


async def test_an_announced_placement_that_never_arrives_is_fenced(rc: RedisCluster, cluster_url: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway died between its intent and its transaction (or the transaction is stuck): past the deadline the
    matcher fences the token, and the late transaction finds it taken and applies nothing."""
    monkeypatch.setattr(engine, "INTENT_WAIT_S", 0.0)
    r = rules(cluster_url)
    await ledger_store.deposit(rc, "bob", "USDT", Decimal("1000"))
    placing = {"symbol": r.symbol, "side": "buy", "type": "limit", "price": "100", "quantity": "0.1"}
    await rc.xadd(names.intake_stream(0), {ledger_store.INTENT: orjson.dumps(
        {"user_id": "bob", "token_id": "lost", "placing": placing})})
    await shards.ensure_group(rc, 0)
    m = make_matcher(cluster_url, rc)
    await m.on_entries(0, await shards.read_new(rc, 0, m.me, 100))
    assert len(m.intents) == 1
    pending = await rc.xpending(names.intake_stream(0), names.INTAKE_GROUP)
    assert pending["pending"] == 1  # held, not acknowledged, until resolved
    await m.expire_intents()
    assert not m.intents
    fenced = await ledger_store.get_order(rc, "bob", "lost")
    assert fenced is not None and fenced.status == "rejected" and fenced.reason == ledger.INTAKE_TIMEOUT
    assert (await rc.xpending(names.intake_stream(0), names.INTAKE_GROUP))["pending"] == 0
    with pytest.raises(DomainError) as e:
        await place(rc, r, "bob", "lost")
    assert e.value.code == "intake_timeout"
    acct = await ledger_store.get_account(rc, "bob")
    assert acct.get("USDT").reserved == 0  # the late transaction reserved nothing
    orders, total = await ledger_store.list_orders(rc, "bob", status="rejected", limit=10, offset=0)
    assert total == 1 and orders[0].token_id == "lost"


async def test_a_confirmation_that_never_arrives_is_made_up_by_reading_the_order(
        rc: RedisCluster, cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway died after its transaction, before confirming: the matcher reads the order at the deadline and
    rests it like any other."""
    monkeypatch.setattr(engine, "INTENT_WAIT_S", 0.0)
    r = rules(cluster_url)
    await ledger_store.deposit(rc, "cy", "USDT", Decimal("1000"))
    real_confirm = ledger_store._confirm

    async def lost(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(ledger_store, "_confirm", lost)
    await place(rc, r, "cy", "rest")
    monkeypatch.setattr(ledger_store, "_confirm", real_confirm)
    await shards.ensure_group(rc, 0)
    m = make_matcher(cluster_url, rc)
    await m.on_entries(0, await shards.read_new(rc, 0, m.me, 100))
    assert len(m.intents) == 1 and len(m.index) == 0
    await m.expire_intents()
    assert len(m.index) == 1
    assert await rc.zrange(names.shard_open_key(0), 0, -1) == [b"cy rest"]
    assert (await rc.xpending(names.intake_stream(0), names.INTAKE_GROUP))["pending"] == 0


async def test_a_takeover_claims_unresolved_intents(rc: RedisCluster, cluster_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A matcher read an intent and died before resolving it: the next holder claims it and resolves it."""
    monkeypatch.setattr(engine, "INTENT_WAIT_S", 0.0)
    r = rules(cluster_url)
    placing = {"symbol": r.symbol, "side": "sell", "type": "market", "price": None, "quantity": "0.5"}
    await rc.xadd(names.intake_stream(0), {ledger_store.INTENT: orjson.dumps(
        {"user_id": "di", "token_id": "t", "placing": placing})})
    await shards.ensure_group(rc, 0)
    dead = make_matcher(cluster_url, rc)
    await dead.on_entries(0, await shards.read_new(rc, 0, dead.me, 100))
    assert len(dead.intents) == 1
    heir = make_matcher(cluster_url, rc)
    await heir.on_entries(0, await shards.claim_pending(rc, 0, heir.me))
    assert len(heir.intents) == 1
    await heir.expire_intents()
    fenced = await ledger_store.get_order(rc, "di", "t")
    assert fenced is not None and fenced.reason == ledger.INTAKE_TIMEOUT and fenced.price is None
    assert (await rc.xpending(names.intake_stream(0), names.INTAKE_GROUP))["pending"] == 0


async def test_the_recovery_scan_walks_every_master(rc: RedisCluster, cluster_url: str) -> None:
    """``scan_open_orders`` (a shard's one-time open-set build) finds the open orders of users on all three masters."""
    r = rules(cluster_url)
    users = [f"s{i}" for i in range(9)]
    for u in users:
        await ledger_store.deposit(rc, u, "USDT", Decimal("1000"))
        await place(rc, r, u, "open1")
        await place(rc, r, u, "gone")
        await ledger_store.cancel(rc, user_id=u, token_id="gone", now_us=now_us())
    masters = {rc.get_node_from_key(names.open_orders_key(u)).name for u in users}  # type: ignore[union-attr]
    assert len(masters) == 3
    found = await ledger_store.scan_open_orders(rc)
    assert sorted((o.user_id, o.token_id) for o in found) == sorted((u, "open1") for u in users)
