"""Every Python example of docs/client.md runs, as its own program, against a real gateway with market data."""

from __future__ import annotations

import asyncio
import os
import re
import sys

import pytest

from client import ApiError, SimpleRouterClient
from shared.settings import ROOT
from tests.client_helpers import running_system

DOC = ROOT / "docs" / "client.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 4


async def _ws_order_actions(base: str) -> bool:
    async with SimpleRouterClient(base) as c:
        await c.register("probe_" + os.urandom(4).hex(), "probe password")
        async with c.stream() as ws:
            try:
                await ws.request("cancel_order", token_id="probe")
            except ApiError as e:
                return e.code != "unknown_action"
    return True


@pytest.mark.timeout(180)
@pytest.mark.parametrize("index", range(len(BLOCKS)))
async def test_doc_example_runs(redis_url: str, index: int) -> None:
    code = BLOCKS[index]
    async with running_system(redis_url) as base:
        if "# needs: ws-order-actions" in code and not await _ws_order_actions(base):
            pytest.skip("the gateway has no WebSocket order actions yet")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, cwd=ROOT, env={**os.environ, "SR_URL": base},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 90)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, f"example {index} failed:\n{code}\n--- stdout\n{out.decode()}\n--- stderr\n{err.decode()}"
