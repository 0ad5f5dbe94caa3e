"""Helpers for the ingestor tests: settings with the pairs the exchanges' doc examples use, and a small
WebSocket server on 127.0.0.1 whose behaviour each test scripts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve

from shared.settings import Settings, load_settings

PAIRS_TOML = """
[[pairs]]
symbol = "BTCUSDT"
base = "BTC"
quote = "USDT"
binance = "BTCUSDT"
okx = "BTC-USDT"
tick_size = "0.01"
lot_step = "0.00001"
min_notional = "5"

[[pairs]]
symbol = "BNBUSDT"
base = "BNB"
quote = "USDT"
binance = "BNBUSDT"
okx = "BNB-USDT"
tick_size = "0.01"
lot_step = "0.001"
min_notional = "5"

[[pairs]]
symbol = "BNBBTC"
base = "BNB"
quote = "BTC"
binance = "BNBBTC"
okx = "BNB-BTC"
tick_size = "0.000001"
lot_step = "0.001"
min_notional = "0.0001"
"""


def doc_settings(tmp_path: Path, **env: str) -> Settings:
    cfg = tmp_path / "config.toml"
    cfg.write_text(PAIRS_TOML)
    return load_settings(cfg, env=env)


Handler = Callable[[ServerConnection], Awaitable[None]]


class ScriptedServer:
    """Counts connections and keeps what the client sent; ``handler`` plays the exchange."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.paths: list[str] = []
        self.received: list[list[str | bytes]] = []
        self.port = 0

    async def _serve(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.paths.append(ws.request.path if ws.request else "")
        self.received.append([])
        with contextlib.suppress(Exception):
            await self.handler(ws)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def scripted_server(handler: Handler) -> AsyncIterator[ScriptedServer]:
    srv = ScriptedServer(handler)
    async with serve(srv._serve, "127.0.0.1", 0) as server:
        srv.port = next(iter(server.sockets)).getsockname()[1]
        yield srv


async def wait_for(cond: Callable[[], bool], within_s: float = 5.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def many_pairs_toml(n: int, quote: str = "USDT") -> str:
    """``n`` synthetic pairs ``P000USDT``, ``P001USDT``... (base ``P000``, OKX ``P000-USDT``), listed in reverse
    order so that nothing may rely on the file's order."""
    out = []
    for i in reversed(range(n)):
        base = f"P{i:03d}"
        out.append(f'[[pairs]]\nsymbol = "{base}{quote}"\nbase = "{base}"\nquote = "{quote}"\nbinance = "{base}{quote}"\n'
                   f'okx = "{base}-{quote}"\ntick_size = "0.01"\nlot_step = "0.001"\nmin_notional = "5"\n')
    return "\n".join(out)


def many_pairs_config(tmp_path: Path, n: int) -> Path:
    cfg = tmp_path / f"config-{n}-pairs.toml"
    cfg.write_text(many_pairs_toml(n))
    return cfg


def many_pairs_settings(tmp_path: Path, n: int, **env: str) -> Settings:
    return load_settings(many_pairs_config(tmp_path, n), env=env)
