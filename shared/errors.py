"""The one error of the domain and the services: a stable ``code`` and a readable ``message``.

It knows nothing of transports: the REST API maps codes to HTTP statuses in one table
(``gateway.rest.errors.STATUS``), the WebSocket answers ``{"type": "error", "code", "message"}``.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refused request or a broken rule. ``retry_after_s`` is set when trying again later may succeed."""

    def __init__(self, code: str, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
