"""Exchange simulator speaking the Binance and OKX public WebSocket protocols (for tests and offline runs)."""
