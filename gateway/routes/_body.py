"""OpenAPI request-body documentation for routes that read their JSON themselves (exact decimals)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response


def json_body(properties: dict[str, Any], required: list[str], example: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema, "example": example}}}}


DECIMAL = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}],
           "description": "exact decimal: a JSON number or a numeric string"}


class JsonOut(Response):
    """JSON rendered by orjson from plain dicts (decimals are already strings)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
