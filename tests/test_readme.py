"""The README's claims are checked against the code: a doc example that drifts from the code fails here."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest
from fastapi.routing import APIRoute

from shared.settings import ROOT, Settings
from tests.servers import make_settings, run_gateway

README = (ROOT / "README.md").read_text()


def _block_after(heading: str, lang: str) -> str:
    part = README.split(heading, 1)[1]
    m = re.search(rf"```{lang}\n(.*?)```", part, re.S)
    assert m, f"no {lang} block after {heading}"
    return m.group(1)


def test_two_commands() -> None:
    assert "make run" in README and "make test" in README and "make run FEED=sim" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_setting_is_documented() -> None:
    for section, field in Settings.model_fields.items():
        if section == "pairs":
            assert "`pairs[]`" in README
            continue
        if not hasattr(field.annotation, "model_fields"):  # a top-level key
            assert f"`{section}`" in README, f"README does not document {section}"
            continue
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            assert re.search(rf"`{section}\.{key}`|{section}\.\w+` / `{section}\.{key}`|`{section}\.{key}` ", README) \
                or f"{section}.{key}" in README, f"README does not document {section}.{key}"


def test_every_route_is_documented(redis_url: str) -> None:
    from gateway.app import create_app

    app = create_app(make_settings(redis_url))
    for route in app.routes:
        if isinstance(route, APIRoute):
            for method in route.methods - {"HEAD"}:
                assert f"`{method} {route.path}`" in README or f"`{method} {route.path}`," in README, \
                    f"README route table misses {method} {route.path}"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_examples_run(redis_url: str) -> None:
    script = _block_after("### REST with curl", "sh")
    async with run_gateway(redis_url) as base:
        script = script.replace("BASE=http://127.0.0.1:8000", f"BASE={base}")
        proc = await asyncio.create_subprocess_exec(
            "bash", "-euo", "pipefail", "-c", script.replace("curl -s ", "curl -sS --fail-with-body "),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert '"status":"open"' in text.replace(" ", "") and '"status":"cancelled"' in text.replace(" ", ""), text
    assert '"assets"' in text and '"access_token"' in text
