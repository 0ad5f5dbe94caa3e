"""The reference of ``bench.rest_ratio``: the least a FastAPI route on uvicorn costs (one route, a small dict).

Run by the benchmark as ``python -m uvicorn bench.trivial_app:app --workers 1``.
"""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}
