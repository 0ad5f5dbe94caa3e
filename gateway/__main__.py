import sys

import uvicorn

from gateway.app import GatewayConfigError, check_settings
from gateway.wsserver import UVICORN_WS_OPTIONS
from shared.logs import setup_logging
from shared.settings import get_settings

settings = get_settings()
setup_logging("gateway", settings.log.level)
try:
    check_settings(settings)
except GatewayConfigError as e:
    print(f"gateway: {e}", file=sys.stderr)
    raise SystemExit(2) from None
uvicorn.run(
    "gateway.app:create_app",
    factory=True,
    host=settings.gateway.host,
    port=settings.gateway.port,
    workers=settings.gateway.workers,
    log_level=settings.log.level.lower(),
    **UVICORN_WS_OPTIONS,
)
