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
        "symbol": "BTCUSDT", "base": "BTC", "quote": "USDT", "tick_size": 0.01, "lot_step": 0.00001,
        "min_notional": 5, "maker_fee": 0, "taker_fee": 0,
        "exchanges": {"binance": "BTCUSDT", "okx": "BTC-USDT"},
    }
    assert info["symbols"][4]["tick_size"] == 0.00001 and info["symbols"][4]["exchanges"]["okx"] == "DOGE-USDT"


async def test_info_reflects_fee_configuration(redis_url: str, tmp_path: Path) -> None:
    cfg = DEFAULT_CONFIG.read_text().replace('min_notional = "5"\n', 'min_notional = "5"\nmaker_fee = "0.0010"\n'
                                                                 'taker_fee = "0.002"\n', 1)
    (tmp_path / "c.toml").write_text(cfg)
    async with run_gateway(redis_url, SR_CONFIG=str(tmp_path / "c.toml")) as base, \
            httpx.AsyncClient(base_url=base) as c:
        symbols = (await c.get("/info")).json()["symbols"]
    assert (symbols[0]["maker_fee"], symbols[0]["taker_fee"]) == (0.0010, 0.002)
    assert (symbols[1]["maker_fee"], symbols[1]["taker_fee"]) == (0, 0)


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
            if method in ("post", "put") and path != "/logout":  # the one bodiless POST
                assert "requestBody" in op and "422" in responses, (path, method)
    login = spec["paths"]["/login"]["post"]
    assert set(login["requestBody"]["content"]) == {"application/json", "application/x-www-form-urlencoded"}
    assert {"401", "422", "429"} <= set(login["responses"])
    assert {"409", "413", "415", "422"} <= set(spec["paths"]["/register"]["post"]["responses"])
    assert "401" in spec["paths"]["/me"]["get"]["responses"]
    assert spec["paths"]["/me"]["get"]["security"]
    for path, method in (("/logout", "post"), ("/me/password", "put"), ("/api-keys", "post"), ("/api-keys", "get"),
                         ("/api-keys/{key_id}", "delete")):
        op = spec["paths"][path][method]
        assert op["security"] and {"401", "403"} <= set(op["responses"]), (path, method)
    assert {"429", "503"} <= set(spec["paths"]["/register"]["post"]["responses"])
    assert "403" in spec["paths"]["/orders"]["post"]["responses"]


async def test_openapi_links_enums_and_exact_decimal_schemas(redis_url: str) -> None:
    """What schemathesis' stateful phase and its positive/negative checks rely on (tests/test_fuzz_rest.py)."""
    import re

    async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
        spec = (await c.get("/openapi.json")).json()
    op_ids = {op["operationId"]: (m, p) for p, ops in spec["paths"].items() for m, op in ops.items()}
    placed = spec["paths"]["/orders"]["post"]["responses"]["201"]["links"]
    assert {name: op_ids[link["operationId"]] for name, link in placed.items()} == {
        "GetOrder": ("get", "/orders/{token_id}"), "ModifyOrder": ("put", "/orders/{token_id}"),
        "CancelOrder": ("delete", "/orders/{token_id}")}
    assert placed["GetOrder"]["parameters"] == {"token_id": "$response.body#/token_id"}
    login = spec["paths"]["/register"]["post"]["responses"]["201"]["links"]["Login"]
    assert op_ids[login["operationId"]] == ("post", "/login")
    assert login["requestBody"] == {"username": "$request.body#/username", "password": "$request.body#/password"}
    schemas = spec["components"]["schemas"]
    assert schemas["DepositIn"]["properties"]["asset"]["enum"] == ["BTC", "USDT", "ETH", "SOL", "XRP", "DOGE"]
    assert "BTCUSDT" in schemas["PlaceOrderIn"]["properties"]["symbol"]["enum"]
    # A modification needs a field, and null is no value (it was documented as one).
    modify = schemas["ModifyOrderIn"]
    assert modify["minProperties"] == 1 and "null" not in str(modify["properties"])
    # Decimal strings: the pattern is anchored (unanchored, any string holding a digit was documented valid)
    # and says "positive" where the field is.
    number, string = schemas["DepositIn"]["properties"]["amount"]["anyOf"]
    assert number == {"type": "number", "exclusiveMinimum": 0.0, "exclusiveMaximum": 1e15}
    pattern = re.compile(string["pattern"])
    assert string["maxLength"] == 64 and string["pattern"].startswith("^") and string["pattern"].endswith("$")
    for ok in ("1", "0.5", ".5", "5.", "+2", "1e3", "0001.10"):
        assert pattern.search(ok), ok
    for ok in (" 1", "1\t", "\r\n1 "):
        assert pattern.search(ok), ok
    for bad in ("0", "0.00", "-1", "x1", "1x", "\u00a01", "1_000", "0x10", "", "NaN", " "):
        assert not pattern.search(bad), bad
    password = schemas["RegisterIn"]["properties"]["password"]
    assert (password["minLength"], password["maxLength"]) == (2, 72)


async def test_decimal_strings_padded_with_other_than_json_blanks_are_refused(redis_url: str) -> None:
    """Padding was stripped with str.strip(), which also takes NBSP, U+2003 or U+001C, none of which the
    document's pattern allows; JSON's own blanks around a number stay accepted."""
    from tests.servers import make_settings
    from tests.trading_helpers import auth

    settings = make_settings(redis_url)
    async with run_gateway(redis_url, settings) as base, httpx.AsyncClient(base_url=base) as c:
        a = auth(settings, "spaces")
        for amount in ("\u00a05", "5\u2003", "\x1c5", "\x0b5", " " * 64 + "5"):
            r = await c.post("/deposit", json={"asset": "USDT", "amount": amount}, headers=a)
            assert (r.status_code, r.json()["code"]) == (422, "invalid_number"), amount
        assert (await c.get("/balance", headers=a)).json()["total"]["USDT"] == 0
        for amount in (" 5", "5 ", "\t5\r\n"):
            assert (await c.post("/deposit", json={"asset": "USDT", "amount": amount}, headers=a)).status_code == 200
        assert (await c.get("/balance", headers=a)).json()["total"]["USDT"] == 15
