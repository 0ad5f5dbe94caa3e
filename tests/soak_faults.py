"""The fault-injection soak (``make soak-faults``; not part of ``make test``): one stack of real processes under
the launcher, round after round of a burst of orders and fills with a random fault in the middle (kill -9 of
the matcher, the gateway or Redis, or ``CLIENT KILL TYPE pubsub``), each round ending with the full audit.

    SOAK_ROUNDS=20 SOAK_SEED=3 make soak-faults      # default 8 rounds; bounded by SOAK_MAX_S (default 900)
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.faults import burst_with_fault
from tests.stack import Stack
from tests.test_faults import FAULTS

ROUNDS = int(os.environ.get("SOAK_ROUNDS", "8"))
SEED = int(os.environ.get("SOAK_SEED", "1"))
MAX_S = float(os.environ.get("SOAK_MAX_S", "900"))


async def kill_pubsub(st: Stack) -> float:
    r = aioredis.Redis.from_url(st.redis_url)
    try:
        await r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    finally:
        await r.aclose()
    return 0.0


@pytest.mark.asyncio
@pytest.mark.timeout(MAX_S + 120)
async def test_soak_faults(tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    faults = {**FAULTS, "pubsub": kill_pubsub}
    deadline = time.monotonic() + MAX_S
    async with Stack(tmp_path) as st:
        for i in range(ROUNDS):
            if time.monotonic() > deadline:
                print(f"soak: stopped after {i} rounds (SOAK_MAX_S={MAX_S:.0f})")
                break
            name = rnd.choice(sorted(faults))
            out = await burst_with_fault(st, lambda f=faults[name]: f(st), seed=1000 * SEED + i,
                                         per_client=rnd.randint(20, 60))
            print(f"soak round {i + 1}/{ROUNDS}: {name}: recovered in {out.recovery_s:.2f}s, "
                  f"{sum(map(len, out.acked.values()))} orders acked and filled, {out.retries} retries; audit ok")
