"""Schemathesis against the gateway's own /openapi.json, served by the real app on a real Redis.

Every generated request (valid and invalid by the schema) is sent with a real user's token, and every response
goes through schemathesis' whole check set (``CONFIG`` lists the few expected differences, each with why): no
5xx, every 4xx in the one error shape ``{"detail", "code"}``, every response as documented, schema-invalid data
refused, schema-valid data accepted unless a rule the schema cannot say refuses it (``RULE_REFUSALS``), auth
never ignored. The stateful phase chains requests along the document's links (``gateway.openapi_links``):
``POST /orders`` -> ``GET``/``PUT``/``DELETE /orders/{token_id}`` ..., ``POST /register`` -> ``POST /login``,
``POST /api-keys`` -> ``DELETE /api-keys/{key_id}``.
Afterwards the fuzzed users' ledgers still hold (total = available + reserved, nothing negative, reserved =
what open orders lock).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from gateway.rest import openapi as openapi_links
from shared import ledger, ledger_store, tokens
from tests.fuzzing import fuzz_settings
from tests.servers import flush_sync, make_settings, redis_client, run_gateway

USERS = ("fuzz-alice", "fuzz-bob")
FUNDS = {"USDT": "1000000", "BTC": "100", "ETH": "1000", "SOL": "10000", "XRP": "100000", "DOGE": "1000000"}

# Schemathesis' whole check set (every check is on unless said otherwise), with the expected differences.
CONFIG: dict[str, Any] = {
    "checks": {
        # Schema-valid data the gateway still refuses with a documented 4xx, for rules the schema cannot say
        # (balances, duplicate token_ids, tick/lot/notional per pair, password bytes vs characters, ...).
        # Which codes may come back is checked by `rule_refusals_only` below, per operation.
        "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "404", "409", "422", "429"]},
        # DELETE /orders/{token_id} cancels: the order stays readable (status "cancelled"), by design
        # (docs/trading.md). use_after_free expects a deleted resource to be gone.
        "use_after_free": {"enabled": False},
    },
    "operations": [
        # Not ready is a documented 503 (no matcher or feeds in this test), with the same body as the 200.
        {"include-path": "/ready", "checks": {"not_a_server_error": {"enabled": False},
                                              "positive_data_acceptance": {"enabled": False}}},
    ],
}

# The codes a schema-valid request may still get, per operation (see CONFIG's positive_data_acceptance).
BOUNDS = ("decimal places", "in magnitude", "significant digits")  # of a decimal string; also JSON numbers' places
RULE_REFUSALS: dict[tuple[str, str], set[str]] = {
    ("POST", "/deposit"): {"too_precise", "amount_too_large", "invalid_number"},
    ("POST", "/orders"): {"insufficient_balance", "duplicate_token_id", "invalid_price", "invalid_quantity",
                          "below_min_notional", "invalid_field", "missing_field", "invalid_number"},
    ("PUT", "/orders/{token_id}"): {"insufficient_balance", "order_not_found", "order_not_open", "not_modifiable",
                                    "invalid_price", "invalid_quantity", "below_min_notional", "invalid_number"},
    ("GET", "/orders/{token_id}"): {"order_not_found"},
    ("DELETE", "/orders/{token_id}"): {"order_not_found", "order_not_open"},
    ("POST", "/register"): {"username_taken", "validation_error"},
    ("POST", "/login"): {"invalid_credentials", "rate_limited", "validation_error"},
    # the fuzzed users exist only in their tokens: /me/password has no user to change (401 comes first)
    ("PUT", "/me/password"): {"validation_error"},
    ("POST", "/api-keys"): {"too_many_keys", "validation_error"},  # a key name must also be printable, unpadded
    ("DELETE", "/api-keys/{key_id}"): {"key_not_found"},
}


class LiveGateway:
    """The real app under uvicorn in a thread of its own, so schemathesis' synchronous client can call it."""

    def __init__(self, redis_url: str) -> None:
        # No matcher here: a market order's answer need not wait for one.
        self.settings = make_settings(redis_url, SR_GATEWAY__ORDER_FINAL_WAIT_S="0")
        self.base = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(redis_url)), daemon=True)

    async def _main(self, redis_url: str) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with run_gateway(redis_url, self.settings) as base:
                self.base = base
                self._ready.set()
                await self._stop.wait()
        except BaseException as e:  # reported to the test thread
            self._error = e
            self._ready.set()

    def __enter__(self) -> LiveGateway:
        self._thread.start()
        if not self._ready.wait(30) or self._error:
            raise RuntimeError(f"gateway did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def token(self, user_id: str) -> str:
        return tokens.issue(user_id, self.settings.auth.jwt_secret, 3600)


def fund(gw: LiveGateway, session: requests.Session, users: tuple[str, ...] = USERS) -> None:
    for user in users:
        for asset, amount in FUNDS.items():
            r = session.post(gw.base + "/deposit", json={"asset": asset, "amount": amount}, timeout=10,
                             headers={"Authorization": f"Bearer {gw.token(user)}"})
            assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def gateway(redis_base_url: str) -> Iterator[LiveGateway]:
    with LiveGateway(redis_base_url) as gw, requests.Session() as session:
        fund(gw, session)
        yield gw


def load_schema(gateway: LiveGateway) -> Any:
    return schemathesis.openapi.from_url(gateway.base + "/openapi.json",
                                         config=SchemathesisConfig.from_dict(CONFIG))


@pytest.fixture(scope="module")
def schema(gateway: LiveGateway) -> Any:
    return load_schema(gateway)


def operations(schema: Any) -> list[Any]:
    return [r.ok() for r in schema.get_all_operations()]


def check_response(case: Any, response: Any) -> None:
    status = response.status_code
    if case.path == "/ready" and status == 503:
        return  # documented: no matcher or feeds in this test
    assert status < 500, f"{case.method} {case.formatted_path}: {status} {response.text[:300]}"
    if 400 <= status < 500 and case.method != "HEAD":
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("detail"), str) and isinstance(body.get("code"), str), (
            f"{case.method} {case.formatted_path}: {status} {response.text[:300]}")


def rule_refusals_only(case: Any, response: Any) -> None:
    """A schema-valid request refused with 400/409/422 names a rule the schema cannot say (``RULE_REFUSALS``);
    ``invalid_number`` only for a decimal's bounds (places, magnitude, digits)."""
    if response.status_code not in (400, 409, 422) or case.meta is None:
        return
    if case.meta.generation.mode is not GenerationMode.POSITIVE:
        return
    body = response.json()
    code, detail = body["code"], body["detail"]
    where = f"{case.method} {case.formatted_path} {case.body!r:.200}: {response.status_code} {detail}"
    assert code in RULE_REFUSALS.get((case.method, case.path), set()), where
    if code == "invalid_number":
        assert any(b in detail for b in BOUNDS), where


def run_mode(gateway: LiveGateway, schema: Any, mode: GenerationMode, examples: int) -> None:
    session = requests.Session()
    for op in operations(schema):
        if op.path == "/metrics":
            continue  # Prometheus text, no parameters

        @fuzz_settings(examples)
        @given(case=op.as_strategy(generation_mode=mode), user=st.sampled_from(USERS))
        def test(case: Any, user: str) -> None:
            headers = {"Authorization": f"Bearer {gateway.token(user)}"}
            response = case.call(base_url=gateway.base, session=session, headers=headers, timeout=10)
            check_response(case, response)
            rule_refusals_only(case, response)
            case.validate_response(response, headers=headers, transport_kwargs={"session": session,
                                                                                "base_url": gateway.base})

        try:
            test()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing in this operation can be made invalid


def check_ledgers(redis_url: str) -> None:
    async def main() -> None:
        r = redis_client(redis_url)
        try:
            for user in USERS:
                acct = await ledger_store.get_account(r, user)
                ledger.check_invariants(acct, await ledger_store.open_orders(r, user))
                for asset, b in acct.balances.items():
                    assert b.available == b.total - b.reserved and b.available >= 0, (user, asset, b)
        finally:
            await r.aclose()

    asyncio.run(main())


def test_positive_requests_follow_the_schema(gateway: LiveGateway, schema: Any, redis_base_url: str) -> None:
    run_mode(gateway, schema, GenerationMode.POSITIVE, 60)
    check_ledgers(redis_base_url)


def test_negative_requests_get_clean_4xx(gateway: LiveGateway, schema: Any, redis_base_url: str) -> None:
    run_mode(gateway, schema, GenerationMode.NEGATIVE, 60)
    check_ledgers(redis_base_url)


def test_stateful_links(gateway: LiveGateway, redis_base_url: str) -> None:
    """Chains along the document's links: an order placed is read, modified, cancelled by its token_id (from
    the answer), a registered user logs in with the same credentials; every step under every check."""
    schema = load_schema(gateway)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {gateway.token(USERS[0])}"}
    links = schema.statistic.transitions
    assert links.total == sum(map(len, openapi_links.LINKS.values())), links

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each scenario from the same state: hypothesis replays a scenario and expects the same answers
            # (a token_id or username used by an earlier scenario would now be a 409).
            flush_sync(redis_base_url)
            fund(gateway, session, USERS[:1])

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": gateway.base, "session": session, "headers": headers, "timeout": 10}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kw: Any) -> None:
            seen[(case.method, case.path, response.status_code)] += 1
            check_response(case, response)
            rule_refusals_only(case, response)
            super().validate_response(response, case, additional_checks, **kw)

    seen: collections.Counter[tuple[str, str, int]] = collections.Counter()
    Machine.run(settings=fuzz_settings(25))
    print(sorted(seen.items()))
    # The chains did run: orders placed, then read and cancelled through the link.
    assert seen[("POST", "/orders", 201)] and seen[("GET", "/orders/{token_id}", 200)], seen
    assert seen[("DELETE", "/orders/{token_id}", 200)], seen
    assert seen[("POST", "/api-keys", 201)] and seen[("DELETE", "/api-keys/{key_id}", 204)], seen
    check_ledgers(redis_base_url)
