"""The ledger's one-round-trip path (``ledger_store._run``): a compare-and-set script on the user's version.

A warm process sends one script call per operation; a state another process changed is recomputed, never
overwritten; a refusal computed from remembered state is checked again on fresh state; a server that lost the
script gets it again; and a connection lost while a write was out never applies it twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared import ledger_store, names
from shared.embedded_redis import free_port
from shared.errors import DomainError
from shared.ledger import PairRules
from shared.matching import Decision
from tests.ledger_audit import audit
from tests.servers import CLUSTER_PASS

# One server: the cut proxy and the command counts need one node (the cluster pass runs the same path through
# tests/test_cluster_ledger.py and tests/test_cluster_failover.py).
pytestmark = [pytest.mark.asyncio, pytest.mark.skipif(CLUSTER_PASS, reason="one Redis server")]

RULES = PairRules("BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"), taker_fee=Decimal("0.001"))


async def _place(r: aioredis.Redis, user: str, token: str, price: str = "100", qty: str = "1") -> Any:
    return await ledger_store.place(r, RULES, user_id=user, token_id=token, side="buy", type_="limit",
                                    price=Decimal(price), quantity=Decimal(qty), now_us=1)


async def _calls(r: aioredis.Redis) -> dict[str, int]:
    stats = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def _count(r: aioredis.Redis, user: str) -> int:
    """How many writes the user's version has seen (``<count>:<nonce>``)."""
    raw = await r.hget(names.balance_key(user), ledger_store.VERSION)
    return 0 if raw is None else int(raw.split(b":")[0])


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


async def test_a_warm_process_sends_one_script_call_per_operation(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    probe = aioredis.Redis.from_url(redis_url)
    try:
        await ledger_store.deposit(r, "w", "USDT", Decimal(1000))  # cold: a read, then the write
        before = await _calls(probe)
        await _place(r, "w", "t1")
        await ledger_store.cancel(r, user_id="w", token_id="t1", now_us=2)
        await ledger_store.deposit(r, "w", "USDT", Decimal(1))
        spent = _delta(before, await _calls(probe))
        spent.pop("info", None)
        # the script's own commands are counted too; what the client sent is three EVALSHA and nothing else
        assert spent.pop("evalsha") == 3
        assert not {"watch", "multi", "exec", "hgetall", "get"} & set(spent), spent
        assert await _count(probe, "w") == 4
    finally:
        await r.aclose()
        await probe.aclose()


async def test_a_change_by_another_process_is_recomputed_not_overwritten(redis_url: str) -> None:
    a = aioredis.Redis.from_url(redis_url)
    b = aioredis.Redis.from_url(redis_url)  # another process: its own remembered state
    try:
        await ledger_store.deposit(a, "x", "USDT", Decimal(1000))
        await ledger_store.deposit(b, "x", "USDT", Decimal(500))  # a's remembered state is now stale
        await _place(a, "x", "t1", "100", "2")  # computed first from 1000, refused by version, recomputed
        acct = await ledger_store.get_account(a, "x")
        assert acct.get("USDT").total == Decimal(1500)
        assert acct.get("USDT").reserved == Decimal("200.2")
        await ledger_store.cancel(b, user_id="x", token_id="t1", now_us=2)  # b never saw t1
        await _place(a, "x", "t2", "100", "1")  # a remembers t1 open: stale, recomputed
        acct = await ledger_store.get_account(b, "x")
        assert acct.get("USDT").reserved == Decimal("100.1")
        await audit(a, "x", deposits={"USDT": Decimal(1500)}, acked={"t1", "t2"})
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_refusal_from_remembered_state_is_checked_on_fresh_state(redis_url: str) -> None:
    a = aioredis.Redis.from_url(redis_url)
    b = aioredis.Redis.from_url(redis_url)
    try:
        await ledger_store.deposit(a, "y", "USDT", Decimal(10))
        await ledger_store.deposit(b, "y", "USDT", Decimal(1000))
        order = await _place(a, "y", "big", "100", "5")  # a alone would say insufficient_balance
        assert order.reserved == Decimal("500.5")
        await _place(b, "y", "dup")
        with pytest.raises(DomainError) as e:
            await _place(a, "y", "dup")  # a does not know the token is taken; the script does
        assert e.value.code == "duplicate_token_id"
        with pytest.raises(DomainError) as e:
            await ledger_store.cancel(a, user_id="y", token_id="nope", now_us=1)
        assert e.value.code == "order_not_found"
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_server_that_lost_the_script_gets_it_again(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    try:
        await ledger_store.deposit(r, "z", "USDT", Decimal(100))
        await r.script_flush()
        await ledger_store.deposit(r, "z", "USDT", Decimal(1))
        assert (await ledger_store.get_account(r, "z")).get("USDT").total == Decimal(101)
    finally:
        await r.aclose()


async def test_every_writer_moves_the_version(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    other = aioredis.Redis.from_url(redis_url)

    async def version() -> int:
        return await _count(other, "v")

    try:
        await ledger_store.deposit(r, "v", "USDT", Decimal(1000))
        await _place(r, "v", "a")
        await _place(r, "v", "b")
        await ledger_store.modify(r, {RULES.symbol: RULES}, user_id="v", token_id="a", price=Decimal(90),
                                  quantity=None, now_us=2)
        await ledger_store.cancel(r, user_id="v", token_id="a", now_us=3)
        assert await version() == 5
        await ledger_store.execute(other, RULES, user_id="v", token_id="b", now_us=lambda: 4,
                                   decide=lambda o: Decision("expire", reason="test"))
        assert await version() == 6
        await ledger_store.fence(other, user_id="v", token_id="late", now_us=5,
                                 placing={"symbol": "BTCUSDT", "side": "buy", "type": "limit", "quantity": "1",
                                          "price": "100"})
        assert await version() == 7
        with pytest.raises(DomainError):  # r's remembered version is 5: the script says no
            await _place(r, "v", "late")
        assert await version() == 7
    finally:
        await r.aclose()
        await other.aclose()


class _Cutter:
    """A TCP proxy in front of Redis that, when armed, cuts the connection carrying the next ``EVALSHA``: before
    passing the request on (it never ran) or after (it ran; its reply is lost)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode: str | None = None  # "request" or "reply"
        self.cuts = 0
        self.port = free_port()
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {cw, uw}
        drop_reply = False

        async def up() -> None:
            nonlocal drop_reply
            while data := await cr.read(65536):
                if self.mode and b"EVALSHA" in data:
                    mode, self.mode = self.mode, None
                    self.cuts += 1
                    if mode == "request":
                        return
                    drop_reply = True
                uw.write(data)
                await uw.drain()

        async def down() -> None:
            while (data := await ur.read(65536)) and not drop_reply:
                cw.write(data)
                await cw.drain()

        pumps = [asyncio.create_task(up()), asyncio.create_task(down())]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for p in pumps:
            p.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for w in (cw, uw):
            w.close()
            self._writers.discard(w)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        try:
            yield f"redis://127.0.0.1:{self.port}"
        finally:
            server.close()
            for w in list(self._writers):
                w.close()
            await server.wait_closed()


@pytest.fixture
async def cutter(redis_url: str) -> AsyncIterator[tuple[_Cutter, str]]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    c = _Cutter(port)
    async with c.running() as url:
        yield c, url


async def test_a_write_whose_reply_was_lost_counts_once(cutter: tuple[_Cutter, str], aredis: aioredis.Redis) -> None:
    c, url = cutter
    r = aioredis.Redis.from_url(url)
    try:
        await ledger_store.deposit(r, "c", "USDT", Decimal(1000))
        c.mode = "reply"  # the place runs, its answer never comes back
        order = await _place(r, "c", "t1")
        assert c.cuts == 1
        assert order.reserved == Decimal("100.1")
        acct = await ledger_store.get_account(aredis, "c")
        assert acct.get("USDT").reserved == Decimal("100.1")
        assert await _count(aredis, "c") == 2
        c.mode = "request"  # this one never reaches Redis: sent again, it applies once
        await ledger_store.cancel(r, user_id="c", token_id="t1", now_us=2)
        assert c.cuts == 2
        assert (await ledger_store.get_account(aredis, "c")).get("USDT").reserved == 0
        await audit(aredis, "c", deposits={"USDT": Decimal(1000)}, acked={"t1"})
    finally:
        await r.aclose()


async def test_a_lost_deposit_is_reported_unknown_not_repeated(cutter: tuple[_Cutter, str],
                                                               aredis: aioredis.Redis) -> None:
    c, url = cutter
    r = aioredis.Redis.from_url(url)
    try:
        await ledger_store.deposit(r, "d", "USDT", Decimal(10))
        c.mode = "reply"  # applied, answer lost: nothing tells this deposit from another one
        with pytest.raises(RedisConnectionError):
            await ledger_store.deposit(r, "d", "USDT", Decimal(5))
        assert (await ledger_store.get_account(aredis, "d")).get("USDT").total == Decimal(15)
        await ledger_store.deposit(r, "d", "USDT", Decimal(1))
        assert (await ledger_store.get_account(aredis, "d")).get("USDT").total == Decimal(16)
    finally:
        await r.aclose()


async def test_the_stored_order_is_its_own_json(aredis: aioredis.Redis) -> None:
    await ledger_store.deposit(aredis, "s", "USDT", Decimal(1000))
    placed = await _place(aredis, "s", "t1")
    cancelled = await ledger_store.cancel(aredis, user_id="s", token_id="t1", now_us=2)
    assert placed.version + 1 == cancelled.version
    assert await aredis.get(names.order_key("s", "t1")) == orjson.dumps(cancelled.to_dict())


async def test_a_write_failing_halfway_still_moves_the_version(aredis: aioredis.Redis) -> None:
    """Redis does not roll a script back: what it wrote before the failure stands, and the moved version makes
    every process read it again rather than compute from what it remembers."""
    await ledger_store.deposit(aredis, "h", "USDT", Decimal(1000))
    await aredis.set(names.orders_index_key("h"), "not a zset")
    with pytest.raises(ResponseError):
        await _place(aredis, "h", "t1")
    assert await _count(aredis, "h") == 2


async def test_a_state_remembered_from_a_lost_branch_never_matches(redis_url: str) -> None:
    """A failover can roll a user back to an older state (writes not yet replicated are lost); another process then
    writes as many times as the lost branch did. The count comes round again, the writer's nonce does not."""
    a = aioredis.Redis.from_url(redis_url)
    b = aioredis.Redis.from_url(redis_url)
    key = names.balance_key("rb")
    try:
        await ledger_store.deposit(a, "rb", "USDT", Decimal(1000))
        before = await a.hgetall(key)
        await ledger_store.deposit(a, "rb", "USDT", Decimal(10))  # a remembers this state: lost below
        await a.delete(key)
        await a.hset(key, mapping=before)  # the rollback
        await ledger_store.deposit(b, "rb", "USDT", Decimal(500))  # the same count as a's lost write
        await ledger_store.deposit(a, "rb", "USDT", Decimal(1))
        assert (await ledger_store.get_account(b, "rb")).get("USDT").total == Decimal(1501)
    finally:
        await a.aclose()
        await b.aclose()
