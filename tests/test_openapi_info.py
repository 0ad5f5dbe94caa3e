"""``GET /info`` and the OpenAPI document, over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx

from shared.settings import DEFAULT_CONFIG
from tests.servers import run_gateway

ERROR_REFS = {"#/components/schemas/ErrorOut", "#/components/schemas/ValidationErrorOut"}


async def test_info(redis_url: str) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        r = await c.get("/info")
    assert r.status_code == 200
    info = r.json()
    assert info["assets"] == ["BTC", "USDT", "ETH", "SOL", "XRP", "DOGE"]
    assert info["pairs"] == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"]
    assert len(info["symbols"]) == 5
    assert info["symbols"][0] == {
        "symbol": "BTCUSDT", "base": "BTC", "quote": "USDT", "tick_size": "0.01", "lot_step": "0.00001",
        "min_notional": "5", "maker_fee": "0", "taker_fee": "0",
        "exchanges": {"binance": "BTCUSDT", "okx": "BTC-USDT"},
    }
    assert info["symbols"][4]["tick_size"] == "0.00001" and info["symbols"][4]["exchanges"]["okx"] == "DOGE-USDT"


async def test_info_reflects_fee_configuration(redis_url: str, tmp_path: Path) -> None:
    cfg = DEFAULT_CONFIG.read_text().replace('min_notional = "5"\n', 'min_notional = "5"\nmaker_fee = "0.0010"\n'
                                                                 'taker_fee = "0.002"\n', 1)
    (tmp_path / "c.toml").write_text(cfg)
    async with run_gateway(redis_url, SR_CONFIG=str(tmp_path / "c.toml")) as base, \
            httpx.AsyncClient(base_url=base) as c:
        symbols = (await c.get("/info")).json()["symbols"]
    assert (symbols[0]["maker_fee"], symbols[0]["taker_fee"]) == ("0.0010", "0.002")
    assert (symbols[1]["maker_fee"], symbols[1]["taker_fee"]) == ("0", "0")


async def test_openapi_documents_every_error_and_the_password_flow(redis_url: str) -> None:
    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        spec = (await c.get("/openapi.json")).json()
        assert (await c.get("/docs")).status_code == 200
    schemes = spec["components"]["securitySchemes"]
    flow = next(iter(schemes.values()))["flows"]["password"]
    assert flow["tokenUrl"] == "/login"
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            assert any(code.startswith("2") for code in responses), (path, method)
            assert "500" in responses
            for code, resp in responses.items():
                if code[0] in "45":
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    if (path, code) == ("/ready", "503"):  # not ready: the same report as the 200
                        assert ref.endswith("/ReadyOut")
                        continue
                    assert ref in ERROR_REFS, (path, method, code)
            if method in ("post", "put"):
                assert "requestBody" in op and "422" in responses, (path, method)
    login = spec["paths"]["/login"]["post"]
    assert set(login["requestBody"]["content"]) == {"application/json", "application/x-www-form-urlencoded"}
    assert {"401", "422", "429"} <= set(login["responses"])
    assert {"409", "413", "415", "422"} <= set(spec["paths"]["/register"]["post"]["responses"])
    assert "401" in spec["paths"]["/me"]["get"]["responses"]
    assert spec["paths"]["/me"]["get"]["security"]
