from __future__ import annotations

import asyncio

from bench.ewma import run


def test_shared_ewma_writes_the_same_bytes_as_one_ewma_per_subscription() -> None:
    _, n_before, before = asyncio.run(run("ewma before", 5, 40, keep=True))
    _, n_apart, apart = asyncio.run(run("ewma apart", 5, 40, keep=True))
    _, n_together, together = asyncio.run(run("ewma together", 5, 40, keep=True))
    assert n_before == n_apart == n_together == 5 * 40
    assert before == together
    assert before != apart  # "apart" subscribers each started at a different trade
    _, _, before_apart = asyncio.run(run("ewma before apart", 5, 40, keep=True))
    assert before_apart == apart
