"""One logging setup for every process: one line per event, JSON with LOG_JSON=1.

Events carry their data as fields: ``log.info("fill ...", extra={"fields": {"event": "fill", ...}})``. In
JSON mode the fields are keys of the line; in text mode they follow the message as ``key=value``.
uvicorn's own loggers (``uvicorn.error``, ``uvicorn.access``) go through the same handler
(``uvicorn_log_config``); an access line gets the fields ``client``, ``method``, ``path``, ``status``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import orjson

_PROCESS = "app"


def json_enabled() -> bool:
    return os.environ.get("LOG_JSON", "").lower() in ("1", "true", "yes")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    extra = getattr(record, "fields", None)
    out: dict[str, Any] = dict(extra) if isinstance(extra, dict) else {}
    # uvicorn.access: '%s - "%s %s HTTP/%s" %d' % (client, method, path, http_version, status)
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, _version, status = record.args
        out.setdefault("event", "http_access")
        out.update(client=client, method=method, path=path, status=status)
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname, "process": _PROCESS,
                               "pid": record.process, "logger": record.name, "msg": record.getMessage()}
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(f"%(asctime)s {_PROCESS} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " | " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def formatter() -> logging.Formatter:
    return JsonFormatter() if json_enabled() else TextFormatter()


def setup_logging(process: str, level: str = "INFO", json_logs: bool = False) -> None:
    """``json_logs`` (the ``log.json_logs`` setting) or ``LOG_JSON=1`` switch every process to JSON lines."""
    global _PROCESS
    _PROCESS = process
    if json_logs:
        os.environ["LOG_JSON"] = "1"  # uvicorn's workers and child processes inherit it
    os.environ["SR_LOG_PROCESS"] = process  # uvicorn's worker processes name themselves the same
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _handler_factory() -> logging.Handler:
    global _PROCESS
    _PROCESS = os.environ.get("SR_LOG_PROCESS", _PROCESS)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    return handler


def uvicorn_log_config(level: str = "INFO") -> dict[str, Any]:
    """``uvicorn.run(log_config=...)``: applied in every worker process, so they all log like the rest."""
    uv = {"handlers": [], "level": level, "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"default": {"()": "shared.logs._handler_factory"}},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {"uvicorn": uv, "uvicorn.error": uv, "uvicorn.access": uv},
    }
