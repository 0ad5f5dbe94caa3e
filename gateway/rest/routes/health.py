"""Operations: liveness, readiness and Prometheus metrics (docs/operations.md)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gateway import metrics
from gateway.rest.errors import INTERNAL_ERROR
from gateway.services.readiness import HealthOut, ReadyOut, probe, readiness
from shared.settings import EXCHANGES

router = APIRouter(tags=["operations"], responses=INTERNAL_ERROR)


@router.get("/health", summary="Liveness", response_model=HealthOut,
            description="Answers as long as the process serves requests; no I/O.")
async def health() -> HealthOut:
    return HealthOut()


def _heard(request: Request) -> dict[str, tuple[str, int]]:
    market = getattr(request.app.state, "market", None)
    health = getattr(market, "health", None)
    return health.heard() if health is not None else {}


@router.get("/ready", summary="Readiness", response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "Not ready: the same body, `status: not_ready`"}},
            description="Redis reachable (one pipelined round trip, 0.5 s at most), each exchange's feed state "
                        "and age, the matcher's heartbeat. 200 when `ready` or `degraded` (some exchange not "
                        "live), 503 when `not_ready`.")
async def ready(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    rcheck, matcher, feeds = await probe(request.app.state.redis, EXCHANGES, _heard(request),
                                         settings.feeds.stale_after_s)
    out = readiness(rcheck, matcher, feeds)
    return JSONResponse(out.model_dump(), status_code=503 if out.status == "not_ready" else 200)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {metrics.CONTENT_TYPE_LATEST: {}},
                             "description": "Prometheus text exposition format (every worker's figures summed)"}})
async def prometheus_metrics(request: Request) -> Response:
    settings = request.app.state.settings
    rcheck, matcher, feeds = await probe(request.app.state.redis, EXCHANGES, _heard(request),
                                         settings.feeds.stale_after_s)
    return Response(metrics.render(feeds, rcheck.ok, matcher.alive), media_type=metrics.CONTENT_TYPE_LATEST)
