"""Exchange ingestors: one process per exchange, WebSocket -> normalized messages -> Redis."""
