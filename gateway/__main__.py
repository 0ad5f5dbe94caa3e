"""``python -m gateway``: uvicorn with ``gateway.workers`` worker processes.

Prometheus multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before ``prometheus_client`` is first
imported (by this process and by every worker it spawns), hence before the imports below. A fresh temporary
directory is made per start (stale files of a previous run would be added in) and removed at exit; a directory
given by the user is used as is.
"""

import os
import shutil
import tempfile

_own_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_dir = tempfile.mkdtemp(prefix="sr-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_dir

import sys  # noqa: E402

import uvicorn  # noqa: E402

from gateway.app import GatewayConfigError, check_settings  # noqa: E402
from gateway.realtime.server import UVICORN_OPTIONS  # noqa: E402
from shared.logs import setup_logging, uvicorn_log_config  # noqa: E402
from shared.settings import get_settings  # noqa: E402

settings = get_settings()
setup_logging("gateway", settings.log.level, settings.log.json_logs)
try:
    check_settings(settings)
except GatewayConfigError as e:
    print(f"gateway: {e}", file=sys.stderr)
    raise SystemExit(2) from None
try:
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=settings.gateway.host,
        port=settings.gateway.port,
        workers=settings.gateway.workers,
        log_level=settings.log.level.lower(),
        log_config=uvicorn_log_config(settings.log.level),
        **UVICORN_OPTIONS,
    )
finally:
    if _own_dir:
        shutil.rmtree(_own_dir, ignore_errors=True)
