"""A stateful model of the whole trading path: hypothesis' ``RuleBasedStateMachine`` drives the real services and
checks every response and the ledgers in Redis after every step.

Real parts, started once for the module: the simulator (BTCUSDT paused, so its prices move only when the model
pushes them; the other pairs keep walking so both feeds stay live), both ingestor processes, the matcher and the
gateway under uvicorn, all in one background event loop; the state machine talks to the gateway over HTTP.

Why the predictions can be exact: the matcher reads market data and order nudges from one pub/sub connection, in
the order Redis published them. The model waits until it has itself received every quote it pushed (so the
matcher has it queued before any later order), and after every step waits until each order the model expects
the matcher to settle is settled. The matcher therefore sees exactly the model's sequence of events.

``FUZZ_EXAMPLES`` (tests/fuzzing.py) raises the example count, ``MODEL_STEPS`` the steps per example
(``make soak-model``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shared import names
from shared.schema import BBO, Book, FeedStatus
from shared.settings import DEFAULT_CONFIG, Settings
from simulator import Simulator
from tests.e2etools import MdSink, ingestor_processes
from tests.fuzzing import fuzz_settings
from tests.ledger_audit import audit
from tests.ledger_model import D, Ledger, Leg, MOrder, PairSpec, Quote, best, crosses
from tests.servers import CLUSTER_PASS, flush_sync, make_settings, redis_client, run_gateway
from tests.trading_helpers import matcher

T = TypeVar("T")
SYM = "BTCUSDT"
EXCHANGES = ("binance", "okx")
PAIR = PairSpec(SYM, "BTC", "USDT", D("0.01"), D("0.00001"), D(5), D("0.001"), D("0.002"))
MID = D("60000.00")
STEPS = int(os.environ.get("MODEL_STEPS", "0") or 0) or 30
EXAMPLES = 20
WAIT_S = 20.0  # generous: a loaded 2-core machine
ENV = {"SR_FEEDS__STALE_AFTER_S": "30", "SR_GATEWAY__ORDER_FINAL_WAIT_S": "15",
       "SR_AUTH__LOGIN_FAILURES_PER_IP": "1000000"}
START = {ex: Quote(MID, D(1), MID + PAIR.tick, D(1), MID - 5 * PAIR.tick, D(1), MID + 6 * PAIR.tick, D(1))
         for ex in EXCHANGES}


def fee_config(tmp: Path) -> Path:
    """The default configuration with fees on BTCUSDT, so every fill's fee arithmetic is checked."""
    cfg = DEFAULT_CONFIG.read_text().replace(
        'min_notional = "5"\n', f'min_notional = "5"\nmaker_fee = "{PAIR.maker_fee}"\ntaker_fee = "{PAIR.taker_fee}"\n',
        1)
    path = tmp / "config.toml"
    path.write_text(cfg)
    return path


class Services:
    """Simulator, ingestor processes, matcher, gateway and a market-data sink in a background thread's loop."""

    def __init__(self, redis_url: str, tmp: Path) -> None:
        self.redis_url = redis_url
        self.tmp = tmp
        self.cfg = fee_config(tmp)
        self.settings: Settings = make_settings(redis_url, SR_CONFIG=str(self.cfg), **ENV)
        self.base = ""
        self.quotes: dict[str, Quote] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            self.r = redis_client(self.redis_url)
            ks = self.settings.redis.keyspace  # the cluster pass (SR_TEST_CLUSTER=1): sharded, explicit channels
            md = [ks.md_channel(k, ex, SYM) for k in ("bbo", "book", "trade") for ex in EXCHANGES]
            async with (Simulator(settings=self.settings, seed=11) as sim,
                        MdSink.open(self.redis_url, f"md:*:*:{SYM}", cluster=CLUSTER_PASS, channels=md) as sink,
                        ingestor_processes(self.redis_url, sim, self.tmp, cluster=CLUSTER_PASS, SR_CONFIG=str(self.cfg),
                                           **ENV),
                        matcher(self.settings, self.redis_url, live=()),
                        MdSink.open(self.redis_url, names.status_channel("*"), cluster=CLUSTER_PASS,
                                    channels=[ks.status_channel(ex) for ex in EXCHANGES]) as status,
                        run_gateway(self.redis_url, self.settings) as base):
                self.sim, self.sink, self.base = sim, sink, base
                sim.pause(SYM)
                await sim.binance.wait_connections(1, 30)
                for ch in ("bbo-tbt", "books5"):
                    await sim.okx.wait_subscribed((ch, "BTC-USDT"), 30)
                for ex in EXCHANGES:
                    await status.wait(lambda c, m, ex=ex: isinstance(m, FeedStatus) and m.exchange == ex
                                      and m.state == "up", 30)
                await self._push(START)
                self._ready.set()
                await self._stop.wait()
            await self.r.aclose()
        except BaseException as e:  # reported to the test thread
            self._error = e
            self._ready.set()

    async def _push(self, quotes: dict[str, Quote]) -> None:
        """Send the quotes, one exchange after the other, each once this process has received the previous one
        from Redis: the matcher, subscribed to the same channels, then sees them in this order, before anything
        published later. (Two ingestor processes publishing at once would race.)"""
        for ex, q in quotes.items():
            mark = self.sink.mark()
            srv = self.sim.server(ex)
            await srv.push_bbo(SYM, bid=str(q.bid), ask=str(q.ask), bid_qty=str(q.bid_sz), ask_qty=str(q.ask_sz),
                               book=False)
            await srv.push_book(SYM, bids=[(str(q.bid), str(q.bid_sz)), (str(q.bid2), str(q.bid2_sz))],
                                asks=[(str(q.ask), str(q.ask_sz)), (str(q.ask2), str(q.ask2_sz))])

            def is_bbo(c: str, m: Any, ex: str = ex, q: Quote = q) -> bool:
                return (isinstance(m, BBO) and m.exchange == ex
                        and (m.bid_px, m.bid_sz, m.ask_px, m.ask_sz) == (q.bid, q.bid_sz, q.ask, q.ask_sz))

            def is_book(c: str, m: Any, ex: str = ex, q: Quote = q) -> bool:
                return (isinstance(m, Book) and m.exchange == ex
                        and tuple(m.bids) == ((q.bid, q.bid_sz), (q.bid2, q.bid2_sz))
                        and tuple(m.asks) == ((q.ask, q.ask_sz), (q.ask2, q.ask2_sz)))

            await self.sink.wait(is_bbo, WAIT_S, since=mark)
            await self.sink.wait(is_book, WAIT_S, since=mark)
            self.quotes[ex] = q

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def push(self, quotes: dict[str, Quote]) -> None:
        self.call(self._push(quotes))

    def __enter__(self) -> Services:
        self._thread.start()
        if not self._ready.wait(90) or self._error:
            raise RuntimeError(f"services did not start: {self._error!r}") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def services(redis_base_url: str) -> Iterator[Services]:
    flush_sync(redis_base_url)
    with tempfile.TemporaryDirectory() as tmp, Services(redis_base_url, Path(tmp)) as svc:
        yield svc


# --- strategies ------------------------------------------------------------------------------------------------

ticks = st.integers(-30, 30)
sizes = st.sampled_from([D("0.000003"), D("0.00005"), D("0.0002"), D("0.001"), D("0.01"), D("0.5")])
quantities = st.sampled_from([D("0.0001"), D("0.0002"), D("0.0005"), D("0.001"), D("0.003"), D("0.01")])
USDT_DEPOSITS = [D("0.3"), D(5), D(50), D(100), D("250.5"), D(1000), D("12.3456789")]
BTC_DEPOSITS = [D("0.001"), D("0.005"), D("0.01234")]
FLAWS = st.sampled_from([None] * 6 + ["reuse", "tick", "lot", "notional", "market_price", "duplicate", "symbol"])
BAD_DEPOSITS = [  # (body, status, code)
    ({"asset": "USDT", "amount": 0}, 422, "invalid_number"),
    ({"asset": "USDT", "amount": -5}, 422, "invalid_number"),
    ({"asset": "USDT", "amount": "1.00000001"}, 422, "too_precise"),
    ({"asset": "BTC", "amount": "0.000001"}, 422, "too_precise"),
    ({"asset": "FOO", "amount": 1}, 422, "unknown_asset"),
    ({"asset": "USDT", "amount": "1e13"}, 422, "amount_too_large"),
    ({"asset": "USDT", "amount": "abc"}, 422, "invalid_number"),
]


def quote_of(m: int, spread: int, bid_sz: Decimal, ask_sz: Decimal, depth: int, deep_sz: Decimal) -> Quote:
    t = PAIR.tick
    bid = MID + m * t
    ask = bid + spread * t
    return Quote(bid, bid_sz, ask, ask_sz, bid - depth * t, deep_sz, ask + depth * t, deep_sz)


quotes_st = st.builds(quote_of, ticks, st.integers(1, 4), sizes, sizes, st.integers(1, 5), sizes)


def choose(seq: list[T], n: int) -> T:
    return seq[n % len(seq)]


class User:
    def __init__(self, uid: str, username: str, password: str, token: str) -> None:
        self.id, self.username, self.password, self.token = uid, username, password, token
        self.ledger = Ledger(PAIR)
        self.failed_logins = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


SVC: Services | None = None
# Choices among the model's users and orders are made with a plain integer, never ``st.data()``/``sampled_from``
# over the current state: a race (``cancel_race``) may end either way, and hypothesis must still replay the same
# draws when an outcome differs.
PICK = st.integers(0, 2**20)
PLAIN = re.compile(r"0|[1-9][0-9]*(\.[0-9]*[1-9])?|0\.[0-9]*[1-9]")  # docs: plain decimals, no exponent
EXPONENT = re.compile(rb':\s*-?[0-9.]+[eE]')  # a bare JSON number written with an exponent


def exact_json(raw: bytes) -> Any:
    """A response as the SDK reads it: every number with a fraction an exact Decimal; none with an exponent."""
    assert not EXPONENT.search(raw), raw[:400]
    return json.loads(raw, parse_float=Decimal)


def plain(v: Any) -> bool:
    """An amount as the API writes it: a number without exponent or trailing zeros."""
    return isinstance(v, int | Decimal) and not isinstance(v, bool) and \
        PLAIN.fullmatch(str(v) if isinstance(v, int) else format(v, "f")) is not None
FIRST_USDT, FIRST_BTC = D(1000), D("0.02")
STATS: Counter[str] = Counter()  # what the examples did, so a run that tests nothing shows


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert SVC is not None
        self.svc = SVC
        self.http = httpx.Client(base_url=self.svc.base, timeout=WAIT_S + 15)
        self.run = uuid.uuid4().hex[:10]
        self.users: list[User] = []
        self.tokens = itertools.count(1)
        self.pending: list[tuple[User, MOrder]] = []
        self.refused: list[str] = []  # token_ids of refused orders (any user's: ids are per user)  # orders the matcher must settle before the next check

    # --- helpers -------------------------------------------------------------------------------------

    def req(self, method: str, path: str, user: User | None = None, **kw: Any) -> httpx.Response:
        return self.http.request(method, path, headers=user.headers if user else None, **kw)

    def expect(self, resp: httpx.Response, status: int, code: str | None = None) -> Any:
        STATS[f"{resp.request.method} {resp.request.url.path.split('/')[1]} {status} {code or ''}".strip()] += 1
        assert resp.status_code == status, f"{resp.request.method} {resp.request.url.path}: expected {status}, got " \
                                           f"{resp.status_code} {resp.text[:400]}"
        body = exact_json(resp.content) if resp.content else None
        if code is not None:
            assert body["code"] == code, f"expected code {code}, got {body}"
        return body

    def new_token(self) -> str:
        return f"{self.run}-{next(self.tokens)}"

    def check_order(self, got: dict[str, Any], o: MOrder) -> None:
        want = {"status": o.status, "side": o.side, "type": o.type, "quantity": o.quantity,
                "price": o.price, "reserved": o.reserved, "filled_quantity": o.filled_quantity,
                "filled_notional": o.filled_notional, "fee": o.fee, "exchanges": list(o.exchanges)}
        for k, v in want.items():
            if isinstance(v, Decimal):
                assert plain(got[k]), f"order {o.token_id}: {k} {got[k]!r} is not a plain decimal"
        have = {k: (D(got[k]) if isinstance(want[k], Decimal) and got[k] is not None else got[k]) for k in want}
        assert have == want, f"order {o.token_id}: server {have}\nmodel  {want}"

    def wait_settled(self) -> None:
        """Each order the model says the matcher settles: wait (bounded) for it, then compare exactly."""
        for user, o in self.pending:
            deadline = time.monotonic() + WAIT_S
            while True:
                got = self.expect(self.req("GET", f"/orders/{o.token_id}", user), 200)
                if got["status"] != "open" or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            self.check_order(got, o)
            STATS[f"matcher {o.type} {o.status} {'/'.join(f[3] for f in o.fills[:1])}".strip()] += 1
        self.pending.clear()

    def after_matching(self, user: User, o: MOrder, before: str) -> None:
        if before == "open" and o.status != "open":
            self.pending.append((user, o))

    def pick_user(self, data: int) -> User:
        return choose(self.users, data)

    # --- rules ---------------------------------------------------------------------------------------

    @initialize()
    def first_user(self) -> None:
        self.svc.push(START)  # every example starts from the same market, so its draws replay exactly
        self.register(FIRST_USDT, FIRST_BTC)

    @precondition(lambda self: len(self.users) < 3)
    @rule(usdt=st.sampled_from([D(0), D(300), D(1000), D("2500.1234567")]), btc=st.sampled_from([D(0), D("0.02")]))
    def register(self, usdt: Decimal, btc: Decimal) -> None:
        """A new user, funded (or not) at once so that most examples trade."""
        username = f"m{self.run}{len(self.users)}"
        password = "pw-" + uuid.uuid4().hex
        body = self.expect(self.req("POST", "/register", json={"username": username, "password": password}), 201)
        u = User(body["user"]["id"], username, password, body["access_token"])
        self.users.append(u)
        for asset, amount in (("USDT", usdt), ("BTC", btc)):
            if amount:
                self.expect(self.req("POST", "/deposit", u, json={"asset": asset, "amount": str(amount)}), 200)
                u.ledger.deposit(asset, amount)

    @rule(data=PICK, right=st.booleans())
    def login(self, data: int, right: bool) -> None:
        u = self.pick_user(data)
        pw = u.password if right else u.password + "x"
        resp = self.req("POST", "/login", json={"username": u.username, "password": pw})
        limited = u.failed_logins >= 5
        if right and not limited:
            u.token = self.expect(resp, 200)["access_token"]
            u.failed_logins = 0
        else:
            u.failed_logins += 0 if right else 1
            self.expect(resp, 429 if u.failed_logins > 5 or (right and limited) else 401)

    @rule(data=PICK, usdt=st.sampled_from(USDT_DEPOSITS), btc=st.sampled_from(BTC_DEPOSITS),
          which=st.sampled_from(["USDT", "BTC"]), bad=st.one_of(st.none(), st.none(), st.sampled_from(BAD_DEPOSITS)))
    def deposit(self, data: int, usdt: Decimal, btc: Decimal, which: str,
                bad: tuple[dict[str, Any], int, str] | None) -> None:
        u = self.pick_user(data)
        if bad is not None:
            body, status, code = bad
            self.expect(self.req("POST", "/deposit", u, json=body), status, code)
            return
        amount = usdt if which == "USDT" else btc
        body = self.expect(self.req("POST", "/deposit", u, json={"asset": which, "amount": str(amount)}), 200)
        u.ledger.deposit(which, amount)
        assert D(body["total"][which]) == u.ledger.total[which]

    @rule(data=PICK, side=st.sampled_from(["buy", "sell"]), off=st.integers(-6, 6), qty=quantities, flaw=FLAWS)
    def place_limit(self, data: int, side: str, off: int, qty: Decimal, flaw: str | None) -> None:
        self.place(data, side, "limit", off, qty, flaw)

    @rule(data=PICK, side=st.sampled_from(["buy", "sell"]), off=st.integers(-2, 8), qty=quantities)
    def place_crossing(self, data: int, side: str, off: int, qty: Decimal) -> None:
        """A limit order at or through the far touch, mostly (``off`` ticks past it): filled at once, as taker."""
        far, _ = best(self.svc.quotes, side)
        near, _ = best(self.svc.quotes, "sell" if side == "buy" else "buy")
        ticks_to_far = int((far - near) / PAIR.tick) * (1 if side == "buy" else -1)
        self.place(data, side, "limit", ticks_to_far + (off if side == "buy" else -off), qty, None)

    @rule(data=PICK, side=st.sampled_from(["buy", "sell"]), type_=st.sampled_from(["ioc", "market"]),
          off=st.integers(-6, 6), qty=quantities, flaw=FLAWS)
    def place_taker(self, data: int, side: str, type_: str, off: int, qty: Decimal,
                    flaw: str | None) -> None:
        self.place(data, side, type_, off, qty, flaw)

    def place(self, data: int, side: str, type_: str, off: int, qty: Decimal, flaw: str | None) -> None:
        u = self.pick_user(data)
        L = u.ledger
        ref, _ = best(self.svc.quotes, "sell" if side == "buy" else "buy")  # near our own side of the book
        price: Decimal | None = None if type_ == "market" else ref + off * PAIR.tick
        token = self.new_token()
        status, code = 201, None
        if flaw == "duplicate" and L.orders:
            token = choose(sorted(L.orders), data >> 4)
        elif flaw == "reuse" and self.refused:  # a refused submission does not use its token_id up
            token = self.refused.pop()
            flaw = None
        if flaw == "tick" and price is not None:
            price += PAIR.tick / 2
            status, code = 422, "invalid_price"
        elif flaw == "lot":
            qty += PAIR.lot / 2
            status, code = 422, "invalid_quantity"
        elif flaw == "notional" and price is not None:
            qty = PAIR.lot
            status, code = 422, "below_min_notional"
        elif flaw == "market_price" and type_ == "market":
            price = ref
            status, code = 422, "invalid_field"
        elif flaw == "symbol":
            status, code = 422, "unknown_symbol"
        body = {"token_id": token, "symbol": "NOPEUSDT" if flaw == "symbol" else SYM, "side": side, "type": type_,
                "quantity": str(qty)}
        if price is not None:
            body["price"] = str(price)
        if status == 201:
            asset, amount = L.lock_for(side, type_, price, qty)
            if token in L.orders:
                status, code = 409, "duplicate_token_id"
            elif not L.can_lock(asset, amount):
                status, code = 400, "insufficient_balance"
        resp = self.req("POST", "/orders", u, json=body)
        got = self.expect(resp, status, code)
        if status != 201:
            if token not in L.orders:
                self.expect(self.req("GET", f"/orders/{token}", u), 404, "order_not_found")
                self.refused.append(token)
            return
        o = L.place(token, side, type_, price, qty)
        L.arrive(o, self.svc.quotes)
        if type_ == "limit":
            assert got["status"] == "open"
            self.after_matching(u, o, "open")
        else:  # answered in the final state, never resting
            assert o.status != "open"
            STATS[f"{type_} {side} {o.status} legs={len(o.fills)}"] += 1
            self.check_order(got, o)
            have = [(D(f["price"]), D(f["quantity"]), f["exchange"], f["liquidity"], D(f["fee"])) for f in got["fills"]]
            assert sorted(have) == sorted(o.fills), f"fills of {token}: server {have}, model {o.fills}"

    @rule(data=PICK, side=st.sampled_from(["buy", "sell"]), qty=quantities)
    def cancel_race(self, data: int, side: str, qty: Decimal) -> None:
        """A marketable limit order cancelled at once: the matcher's fill and the cancel race; exactly one wins,
        and either way the ledger must be exactly the model's for that outcome."""
        u = self.pick_user(data)
        L = u.ledger
        far, _ = best(self.svc.quotes, side)
        asset, amount = L.lock_for(side, "limit", far, qty)
        if far * qty < PAIR.min_notional or not L.can_lock(asset, amount):
            return
        token = self.new_token()
        body = {"token_id": token, "symbol": SYM, "side": side, "type": "limit", "price": str(far),
                "quantity": str(qty)}
        self.expect(self.req("POST", "/orders", u, json=body), 201)
        resp = self.req("DELETE", f"/orders/{token}", u)
        o = L.place(token, side, "limit", far, qty)
        if resp.status_code == 200:
            L.close(o, "cancelled")
            STATS["race: cancel won"] += 1
            self.check_order(self.expect(resp, 200), o)
        else:
            self.expect(resp, 409, "order_not_open")
            STATS["race: fill won"] += 1
            L.arrive(o, self.svc.quotes)
            self.pending.append((u, o))

    @rule(data=PICK, orders=st.lists(st.tuples(st.sampled_from(["buy", "sell"]), st.integers(20, 40), quantities),
                                     min_size=2, max_size=6))
    def burst(self, data: int, orders: list[tuple[str, int, Decimal]]) -> None:
        """Resting limit orders of one user sent at once, on separate connections: which of them the balance
        can hold depends on their order of arrival, but every accepted one must be locked and every refused one
        must not fit in what is left."""
        u = self.pick_user(data)
        L = u.ledger
        bodies = []
        for side, away, qty in orders:
            far, _ = best(self.svc.quotes, side)  # (a crossed market's best bid is above its best ask)
            price = far - away * PAIR.tick if side == "buy" else far + away * PAIR.tick
            bodies.append({"token_id": self.new_token(), "symbol": SYM, "side": side, "type": "limit",
                           "price": str(price), "quantity": str(qty)})

        def send(body: dict[str, str]) -> httpx.Response:
            with httpx.Client(base_url=self.svc.base, timeout=WAIT_S + 15) as c:
                return c.post("/orders", json=body, headers=u.headers)

        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(send, bodies))
        refused = []
        for body, resp in zip(bodies, answers, strict=True):
            side, price, qty = body["side"], D(body["price"]), D(body["quantity"])
            if resp.status_code == 201:
                o = L.place(body["token_id"], side, "limit", price, qty)
                self.check_order(exact_json(resp.content), o)
                assert not crosses(side, price, self.svc.quotes)
            else:
                self.expect(resp, 400, "insufficient_balance")
                refused.append(L.lock_for(side, "limit", price, qty))
                self.refused.append(body["token_id"])
        for asset, amount in refused:
            assert amount > L.available(asset), f"refused a lock of {amount} {asset} with {L.available(asset)} free"
        STATS[f"burst accepted {len(bodies) - len(refused)}/{len(bodies)}"] += 1

    @rule(data=PICK, kind=st.sampled_from(["own", "own", "unknown", "other"]))
    def cancel(self, data: int, kind: str) -> None:
        u = self.pick_user(data)
        L = u.ledger
        if kind == "own" and L.orders:
            o = L.orders[choose(sorted(L.orders), data >> 4)]
            resp = self.req("DELETE", f"/orders/{o.token_id}", u)
            if o.status == "open":
                L.close(o, "cancelled")
                self.check_order(self.expect(resp, 200), o)
            else:
                self.expect(resp, 409, "order_not_open")
            return
        others = [(v, t) for v in self.users if v is not u for t in v.ledger.orders]
        token = choose(others, data >> 4)[1] if kind == "other" and others else self.new_token()
        self.expect(self.req("DELETE", f"/orders/{token}", u), 404, "order_not_found")

    @rule(data=PICK, off=st.one_of(st.none(), st.integers(-6, 6)), qty=st.one_of(st.none(), quantities),
          flaw=st.sampled_from([None] * 5 + ["tick", "lot"]))
    def modify(self, data: int, off: int | None, qty: Decimal | None, flaw: str | None) -> None:
        with_orders = [v for v in self.users if v.ledger.orders]
        if not with_orders:
            return
        u = choose(with_orders, data)
        L = u.ledger
        o = L.orders[choose(sorted(L.orders), data >> 4)]
        if off is None and qty is None:
            off = 0
        ref, _ = best(self.svc.quotes, "sell" if o.side == "buy" else "buy")
        price = None if off is None else ref + off * PAIR.tick
        if flaw == "tick" and price is not None:
            price += PAIR.tick / 2
        elif flaw == "lot" and qty is not None:
            qty += PAIR.lot / 2
        else:
            flaw = None
        body = {k: str(v) for k, v in (("price", price), ("quantity", qty)) if v is not None}
        resp = self.req("PUT", f"/orders/{o.token_id}", u, json=body)
        if o.status != "open":
            self.expect(resp, 409, "order_not_open")
            return
        new_px = price if price is not None else o.price
        new_qty = qty if qty is not None else o.quantity
        assert new_px is not None
        if flaw:
            self.expect(resp, 422, "invalid_price" if flaw == "tick" else "invalid_quantity")
            return
        if new_px * new_qty < PAIR.min_notional:
            self.expect(resp, 422, "below_min_notional")
            return
        asset, amount = L.lock_for(o.side, o.type, new_px, new_qty)
        if not L.can_lock(asset, amount, released=o.reserved):
            self.expect(resp, 400, "insufficient_balance")
            return
        got = self.expect(resp, 200)
        L.modify(o, new_px, new_qty)
        self.check_order(got, o)
        L.arrive(o, self.svc.quotes)
        self.after_matching(u, o, "open")

    @rule(which=st.sampled_from(["binance", "okx", "both", "same"]), a=quotes_st, b=quotes_st)
    def move_touch(self, which: str, a: Quote, b: Quote) -> None:
        """``same``: both exchanges quote the same prices (ties between exchanges)."""
        if which == "same":
            which, b = "both", Quote(a.bid, b.bid_sz, a.ask, b.ask_sz, a.bid2, b.bid2_sz, a.ask2, b.ask2_sz)
        new = {"binance": a, "okx": b} if which == "both" else {which: a}
        for ex, q in new.items():  # one at a time: the matcher may fill resting orders in between
            self.svc.push({ex: q})
            for u in self.users:
                before = {t: o.status for t, o in u.ledger.orders.items()}
                u.ledger.touch_moved(self.svc.quotes)
                for t, o in u.ledger.orders.items():
                    self.after_matching(u, o, before[t])

    def open_limits(self) -> list[tuple[str, User, MOrder]]:
        return sorted((o.token_id, u, o) for u in self.users for o in u.ledger.orders.values() if o.status == "open")

    @staticmethod
    def through(o: MOrder, q: Quote, ticks: int) -> Quote:
        """``q``'s shape, moved so that it crosses ``o``'s limit by ``ticks``."""
        assert o.price is not None
        t = PAIR.tick
        if o.side == "buy":
            ask = o.price - ticks * t
            return Quote(ask - (q.ask - q.bid), q.bid_sz, ask, q.ask_sz, ask - (q.ask - q.bid2), q.bid2_sz,
                         ask + (q.ask2 - q.ask), q.ask2_sz)
        bid = o.price + ticks * t
        return Quote(bid, q.bid_sz, bid + (q.ask - q.bid), q.ask_sz, bid - (q.bid - q.bid2), q.bid2_sz,
                     bid + (q.ask2 - q.bid), q.ask2_sz)

    @rule(data=PICK, ex=st.sampled_from(EXCHANGES), q=quotes_st, through=st.integers(0, 3))
    def cross_resting(self, data: int, ex: str, q: Quote, through: int) -> None:
        """Move one exchange's quote through a resting order's limit (``through`` ticks past it)."""
        opened = self.open_limits()
        if opened:
            self.move_touch(ex, self.through(choose(opened, data)[2], q, through), q)

    @rule(data=PICK, ex=st.sampled_from(EXCHANGES), q=quotes_st, through=st.integers(0, 3), off=st.integers(-6, 6))
    def modify_race(self, data: int, ex: str, q: Quote, through: int, off: int) -> None:
        """A resting order modified while the touch moves through its limit. Either the fill wins (409, filled at
        the old limit as maker) or the modification does (then it fills at its new limit as maker if that crosses
        the new touch, else it rests); the new price never crosses the old touch, so no other outcome is right."""
        opened = self.open_limits()
        if not opened:
            return
        _, u, o = choose(opened, data)
        L = u.ledger
        ref, _ = best(self.svc.quotes, "sell" if o.side == "buy" else "buy")
        new_px = ref + off * PAIR.tick
        asset, amount = L.lock_for(o.side, "limit", new_px, o.quantity)
        if (crosses(o.side, new_px, self.svc.quotes) or new_px * o.quantity < PAIR.min_notional
                or not L.can_lock(asset, amount, released=o.reserved)):
            return
        quote = self.through(o, q, through)
        with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=self.svc.base, timeout=WAIT_S + 15) as c:
            fut = pool.submit(c.put, f"/orders/{o.token_id}", json={"price": str(new_px)}, headers=u.headers)
            self.svc.push({ex: quote})
            resp = fut.result()
        _, named = best(self.svc.quotes, o.side)
        if resp.status_code == 200:
            STATS["modify race: modify won"] += 1
            L.modify(o, new_px, o.quantity)
            self.check_order(exact_json(resp.content), o)
            if crosses(o.side, new_px, self.svc.quotes):
                L.settle(o, [Leg(new_px, o.quantity, named)], "maker")
                self.pending.append((u, o))
        else:
            STATS["modify race: fill won"] += 1
            self.expect(resp, 409, "order_not_open")
            assert o.price is not None
            L.settle(o, [Leg(o.price, o.quantity, named)], "maker")
            self.pending.append((u, o))
        for v in self.users:  # everything else: as any touch move
            before = {t: x.status for t, x in v.ledger.orders.items()}
            v.ledger.touch_moved(self.svc.quotes)
            for t, x in v.ledger.orders.items():
                self.after_matching(v, x, before[t])

    @rule()
    def settle(self) -> None:
        """Nothing open may be marketable against the current touch, on the server as in the model."""
        self.wait_settled()
        for u in self.users:
            body = self.expect(self.req("GET", "/orders", u, params={"status": "open", "limit": 500}), 200)
            for got in body["orders"]:
                px = D(got["price"])
                assert got["type"] == "limit" and not crosses(got["side"], px, self.svc.quotes), got

    # --- after every step ------------------------------------------------------------------------------

    @invariant()
    def ledgers_hold(self) -> None:
        self.wait_settled()
        for u in self.users:
            L = u.ledger
            bal = self.expect(self.req("GET", "/balance", u), 200)
            for asset in ("USDT", "BTC"):
                assert all(plain(bal[k][asset]) for k in bal), bal
                have = (D(bal["total"][asset]), D(bal["reserved"][asset]), D(bal["available"][asset]))
                want = (L.total.get(asset, D(0)), L.reserved.get(asset, D(0)), L.available(asset))
                assert have == want, f"{u.id} {asset}: server (total, reserved, available) {have}, model {want}"
            body = self.expect(self.req("GET", "/orders", u, params={"status": "open", "limit": 500}), 200)
            assert {o["token_id"] for o in body["orders"]} == {t for t, o in L.orders.items() if o.status == "open"}
            fills = self.expect(self.req("GET", "/fills", u, params={"limit": 500}), 200)["fills"]
            have = sorted((f["token_id"], D(f["price"]), D(f["quantity"]), f["exchange"], f["liquidity"], D(f["fee"]))
                          for f in fills)
            want = sorted((t, *f) for t, o in L.orders.items() for f in o.fills)
            assert have == want, f"{u.id} fills: server {have}\nmodel  {want}"
            rep = self.svc.call(audit(self.svc.r, u.id, L.deposits, set(L.orders)))
            for t, o in L.orders.items():
                assert rep.orders[t].status == o.status, f"{t}: redis {rep.orders[t].status}, model {o.status}"

    def teardown(self) -> None:
        for u in self.users:  # leave nothing resting for the next examples' touch moves
            for t, o in u.ledger.orders.items():
                if o.status == "open":
                    self.req("DELETE", f"/orders/{t}", u)
        self.http.close()


@pytest.mark.timeout(0 if os.environ.get("FUZZ_EXAMPLES") else 900)  # shrinking a failure takes minutes
def test_ledger_model(services: Services) -> None:
    global SVC
    SVC = services
    try:
        LedgerMachine.TestCase.settings = settings(fuzz_settings(EXAMPLES), stateful_step_count=STEPS)
        LedgerMachine.TestCase().runTest()
    finally:
        SVC = None
        print("\nledger model:", ", ".join(f"{k}: {v}" for k, v in sorted(STATS.items())))
    for seen in ("matcher limit filled maker", "matcher limit filled taker", "POST orders 400 insufficient_balance"):
        assert STATS[seen], f"the model never saw {seen!r}: {STATS}"
