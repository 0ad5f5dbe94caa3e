"""``GET /info``: assets, pairs and each pair's trading rules (public)."""

from __future__ import annotations

from fastapi import Request, Response
from pydantic import ConfigDict, Field

from gateway.rest.body import api_router
from gateway.rest.models import ExactJSON, OutModel
from gateway.services.decimals import Dec
from shared.settings import EXCHANGES, Settings

router = api_router(tags=["market"])


class SymbolOut(OutModel):
    symbol: str
    base: str
    quote: str
    tick_size: Dec = Field(description="prices must be multiples of this")
    lot_step: Dec = Field(description="quantities must be multiples of this")
    min_notional: Dec = Field(description="price x quantity must be at least this (in the quote asset)")
    maker_fee: Dec = Field(description="fee rate of resting fills, charged in the asset received")
    taker_fee: Dec = Field(description="fee rate of marketable fills, charged in the asset received")
    exchanges: dict[str, str] = Field(description="the pair's own symbol on each exchange")


class InfoOut(OutModel):
    assets: list[str]
    pairs: list[str]
    symbols: list[SymbolOut]

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "assets": ["BTC", "USDT", "ETH"],
        "pairs": ["BTCUSDT", "ETHUSDT"],
        "symbols": [{"symbol": "BTCUSDT", "base": "BTC", "quote": "USDT", "tick_size": 0.01,
                     "lot_step": 0.00001, "min_notional": 5, "maker_fee": 0, "taker_fee": 0,
                     "exchanges": {"binance": "BTCUSDT", "okx": "BTC-USDT"}}],
    }]})


def build_info(settings: Settings) -> InfoOut:
    return InfoOut(
        assets=list(settings.assets),
        pairs=list(settings.symbols),
        symbols=[SymbolOut(symbol=p.symbol, base=p.base, quote=p.quote, tick_size=p.tick_size, lot_step=p.lot_step,
                           min_notional=p.min_notional, maker_fee=p.maker_fee, taker_fee=p.taker_fee,
                           exchanges={ex: getattr(p, ex) for ex in EXCHANGES})
                 for p in settings.pairs],
    )


@router.get("/info", response_model=InfoOut, summary="Assets, pairs and trading rules",
            description="Decimals (tick size, lot step, minimum notional, fee rates) are JSON numbers with exact "
                        "digits.")
async def info(request: Request) -> Response:
    body: bytes | None = getattr(request.app.state, "info", None)
    if body is None:  # the configuration does not change while the process runs
        body = request.app.state.info = bytes(ExactJSON(build_info(request.app.state.settings), as_written=True).body)
    return Response(body, media_type="application/json")
