import httpx
import pytest

from tests.servers import run_gateway


@pytest.mark.asyncio
async def test_health_over_real_http(redis_url: str) -> None:
    async with run_gateway(redis_url) as base:
        async with httpx.AsyncClient(base_url=base) as c:
            r = await c.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
