"""Exchange simulator speaking the Binance and OKX public WebSocket protocols (for tests and offline runs)."""

from simulator.sim import Simulator

__all__ = ["Simulator"]
