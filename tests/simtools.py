"""Helpers for the simulator tests: a started simulator and a few receive helpers over a real client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from shared.settings import load_settings
from simulator import Simulator

SETTINGS = load_settings(env={})


@asynccontextmanager
async def running(**kw: Any) -> AsyncIterator[Simulator]:
    kw.setdefault("settings", SETTINGS)
    kw.setdefault("seed", 1)
    async with Simulator(**kw) as sim:
        yield sim


async def recv_json(ws: ClientConnection, within: float = 3.0) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), within))


async def recv_until(ws: ClientConnection, pred: Callable[[Any], bool], within: float = 3.0) -> Any:
    """The first JSON frame matching ``pred`` (others are skipped)."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no matching frame")
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), left))
        if pred(msg):
            return msg


async def collect(ws: ClientConnection, seconds: float) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        out.append(orjson.loads(raw) if raw not in ("pong",) else raw)
    return out
