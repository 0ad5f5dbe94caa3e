"""``/api-keys``: keys for programs, with scopes ``read`` and ``trade`` (``gateway.services.credentials``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path
from pydantic import Field, StrictInt, field_validator
from starlette.responses import Response

from gateway.rest.body import api_router
from gateway.rest.deps import CredentialsDep, SessionDep
from gateway.rest.errors import error_responses
from gateway.rest.models import OutModel
from gateway.services.principals import ApiKey
from gateway.services.requests import StrictModel

router = api_router(tags=["api keys"])

Scope = Literal["read", "trade"]
KeyId = Annotated[str, Path(description="the key's `id`", max_length=64)]
MAX_EXPIRES_IN_S = 10 * 365 * 86400


class ApiKeyIn(StrictModel):
    name: str = Field(min_length=1, max_length=64, examples=["my bot"])
    scopes: list[Scope] = Field(min_length=1, max_length=2, examples=[["read", "trade"]],
                                description="`read`: every GET and the WebSocket's streams; `trade` adds placing, "
                                            "modifying and cancelling orders and deposits (and implies `read`)")
    expires_in_s: StrictInt | None = Field(default=None, ge=60, le=MAX_EXPIRES_IN_S,
                                     description="seconds until the key stops working; none: it never expires")

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str) -> str:
        if not v.isprintable() or v.strip() != v:
            raise ValueError("must be printable, without leading or trailing spaces")
        return v

    @field_validator("scopes")
    @classmethod
    def _unique(cls, v: list[Scope]) -> list[Scope]:
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a scope")
        return v


class ApiKeyOut(OutModel):
    id: str = Field(examples=["9f86d081884c7d65"])
    name: str = Field(examples=["my bot"])
    scopes: list[Scope] = Field(examples=[["read", "trade"]])
    created_us: int = Field(description="creation time, microseconds since the Unix epoch")
    expires_us: int | None = Field(description="expiry, microseconds since the Unix epoch; null: never")
    last_used_us: int | None = Field(description="last use (to the minute), microseconds since the Unix epoch; "
                                                 "null: never used")


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="the key itself: shown this once, never again; send it as `Authorization: Bearer "
                                 "<key>`, `?token=<key>` or in the WebSocket's auth message",
                     examples=["srk_3f2c9a7e0b8d4c1e9f6a5b4c3d2e1f00_9f86d081884c7d65_" + "x" * 43])


def _out(key: ApiKey, last_used_us: int | None) -> ApiKeyOut:
    return ApiKeyOut(id=key.id, name=key.name, scopes=list(key.scopes),
                     created_us=key.created_us, expires_us=key.expires_us, last_used_us=last_used_us)


@router.post("/api-keys", status_code=201, response_model=NewApiKeyOut, summary="Create an API key",
             description="Needs a login (an API key cannot make keys: 403 `session_required`). The answer holds the "
                         "key itself, once: only its SHA-256 is stored.",
             responses=error_responses(400, 401, 403, 409, 413, 415, 422, 503,
                                       s409="`too_many_keys`: the user has `[auth] api_keys_per_user` keys"))
async def create_key(body: ApiKeyIn, p: SessionDep, credentials: CredentialsDep) -> NewApiKeyOut:
    key, whole = await credentials.add_key(p.user_id, body.name, body.scopes, body.expires_in_s)
    return NewApiKeyOut(**_out(key, None).model_dump(), key=whole)


@router.get("/api-keys", response_model=list[ApiKeyOut], summary="Your API keys, oldest first (never the secret)",
            responses=error_responses(401, 403, 503))
async def list_keys(p: SessionDep, credentials: CredentialsDep) -> list[ApiKeyOut]:
    return [_out(k, used) for k, used in await credentials.keys(p.user_id)]


@router.delete("/api-keys/{key_id}", status_code=204, summary="Delete an API key",
               description="At once, on every gateway: REST calls with it get 401 and WebSockets authenticated with "
                           "it are closed (code 4001).",
               responses=error_responses(401, 403, 404, 422, 503, s404="`key_not_found`"))
async def delete_key(key_id: KeyId, p: SessionDep, credentials: CredentialsDep) -> Response:
    await credentials.delete_key(p.user_id, key_id)
    return Response(status_code=204)
