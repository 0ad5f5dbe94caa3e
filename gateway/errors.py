"""The one error shape every route returns: ``{"detail": "<readable>", "code": "<stable_code>"}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel


class ErrorOut(BaseModel):
    detail: str
    code: str


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


async def _api_error(_: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, ApiError)
    return ORJSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status, headers=exc.headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
