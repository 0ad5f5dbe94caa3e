"""Fault injection on a stack of real processes under the real launcher (``tests/stack.py``): kill -9 of the
matcher, the gateway and Redis in the middle of a burst of orders and fills; Redis dropping every pub/sub
connection. After each: the services recover by themselves, the ledger audit holds for every user, every
acknowledged order is there and filled exactly once, every fill event a client saw is in Redis once.
The recovery times are printed (``pytest -s``). ``make soak-faults`` repeats these in a loop."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from shared.timeutil import now_us
from tests.faults import burst_with_fault, matcher_beat_after
from tests.stack import Stack, wait_for

pytestmark = pytest.mark.asyncio


async def kill_matcher(st: Stack) -> float:
    t0, t_us = time.monotonic(), now_us()
    old = st.kill9("matcher")
    await st.wait_restarted("matcher", old)
    await matcher_beat_after(st, t_us)
    return time.monotonic() - t0


async def kill_gateway(st: Stack) -> float:
    t0 = time.monotonic()
    old = st.kill9("gateway")
    await st.wait_restarted("gateway", old)
    async with httpx.AsyncClient(base_url=st.url, timeout=2) as c:
        async def serves() -> bool:
            return (await c.get("/balance", headers=st.headers("probe"))).status_code == 200
        await wait_for(serves, 60, "the restarted gateway to serve")
    return time.monotonic() - t0


async def kill_redis(st: Stack) -> float:
    t0, t_us = time.monotonic(), now_us()
    old = st.kill9("redis")
    await st.wait_redis_back(old)
    async with httpx.AsyncClient(base_url=st.url, timeout=2) as c:
        async def serves() -> bool:
            return (await c.get("/balance", headers=st.headers("probe"))).status_code == 200
        await wait_for(serves, 60, "the gateway to reach the restarted Redis")
    await matcher_beat_after(st, t_us)
    return time.monotonic() - t0


FAULTS = {"matcher": kill_matcher, "gateway": kill_gateway, "redis": kill_redis}


@pytest.mark.timeout(240)
async def test_kill9_during_a_burst(tmp_path: Path) -> None:
    """One stack, three crashes in turn, each during its own burst of orders and fills."""
    async with Stack(tmp_path) as st:
        for i, (name, fault) in enumerate(FAULTS.items()):
            out = await burst_with_fault(st, lambda f=fault: f(st), seed=i)
            print(f"kill -9 {name}: recovered in {out.recovery_s:.2f}s; {out.retries} client retries; "
                  f"{sum(map(len, out.acked.values()))} orders acked and filled; "
                  f"{sum(map(len, out.fill_events.values()))} fill events seen")
