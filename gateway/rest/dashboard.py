"""The dashboard: static files from ``gateway/web`` served at ``/`` and ``/static/...``.

Plain Starlette routes (not API routes): they are no part of the REST API, so ``/docs`` does not list them.
Only files named here or sitting directly in ``gateway/web`` with a known extension are served (never
``node_modules`` at large, nor ``package.json``); the charting library's standalone build and its license
come from ``gateway/web/node_modules`` (``npm ci`` at build time) under ``/static/vendor/``.
Every response carries a strict Content-Security-Policy: only this origin, for scripts, styles, images and
the WebSocket (CSP level 3 ``'self'`` covers ``ws:``/``wss:`` on the same host), so the page works offline.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
CHART_DIR = WEB_DIR / "node_modules" / "lightweight-charts"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
VENDOR = {
    "lightweight-charts.standalone.production.mjs": CHART_DIR / "dist" / "lightweight-charts.standalone.production.mjs",
    "lightweight-charts.LICENSE.txt": CHART_DIR / "LICENSE",
}


def resolve(path: str, web_dir: Path = WEB_DIR, vendor: dict[str, Path] | None = None) -> Path | None:
    """The file behind ``/static/<path>``, or None: a plain name in ``web_dir`` with a known extension, or a
    ``vendor/<name>`` listed in ``vendor``. No directories, no dot files, nothing outside."""
    vendor = VENDOR if vendor is None else vendor
    if path.startswith("vendor/"):
        return vendor.get(path.removeprefix("vendor/"))
    if "/" in path or "\\" in path or path.startswith(".") or Path(path).suffix not in MEDIA_TYPES:
        return None
    return web_dir / path


def _file(path: Path | None) -> Response:
    if path is None or not path.is_file():
        return PlainTextResponse("not found", status_code=404, headers=SECURITY_HEADERS)
    media = MEDIA_TYPES.get(path.suffix, "text/plain; charset=utf-8") if path.suffix else "text/plain; charset=utf-8"
    return FileResponse(path, media_type=media, headers=SECURITY_HEADERS)


async def index(request: Request) -> Response:
    return _file(WEB_DIR / "index.html")


async def static(request: Request) -> Response:
    return _file(resolve(request.path_params["path"]))


routes = [
    Route("/", index, methods=["GET", "HEAD"], name="dashboard"),
    Route("/static/{path:path}", static, methods=["GET", "HEAD"], name="dashboard_static"),
]
