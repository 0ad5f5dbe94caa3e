"""Python SDK for Simple Router's REST and WebSocket API."""
