"""FastAPI gateway: REST (accounts, trading) and the client WebSocket."""
