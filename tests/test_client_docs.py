"""Every Python example of docs/client.md and README.md runs, as its own program, against a real gateway with market data."""

from __future__ import annotations

import asyncio
import os
import re
import sys

import pytest

from shared.settings import ROOT
from tests.client_helpers import running_system

DOCS = (ROOT / "docs" / "client.md", ROOT / "README.md")
BLOCKS = [b for doc in DOCS for b in re.findall(r"^```python\n(.*?)^```", doc.read_text(), flags=re.S | re.M)]


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.timeout(180)
@pytest.mark.parametrize("index", range(len(BLOCKS)))
async def test_doc_example_runs(redis_url: str, index: int) -> None:
    code = BLOCKS[index]
    async with running_system(redis_url) as base:
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
