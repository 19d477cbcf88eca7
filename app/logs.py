"""JSON logging: one object per line on stderr, which systemd hands to journald."""

from __future__ import annotations

import logging
import re
import sys
import uuid

from pythonjsonlogger.json import JsonFormatter

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_access = logging.getLogger("shortener.access")
# The lowest status that gets an access line (SHORTENER_ACCESS_LOG): all, errors (5xx), off.
_ACCESS_FROM_STATUS = {"all": 0, "errors": 500, "off": 1000}
_access_from_status = 0


def request_id(incoming: str) -> str:
    """The client's X-Request-ID when it is a sane token, else a new one."""
    return incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def wants_access_line(status: int) -> bool:
    return status >= _access_from_status


def access_line(request_id: str, method: str, path: str, status: int, elapsed: float, remote_addr: str | None) -> None:
    """The one JSON line per request, written by Flask and by the fast path alike."""
    if not wants_access_line(status):
        return
    _access.info(
        "request",
        extra={
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "remote_addr": remote_addr,
        },
    )


def configure_logging(level: str = "INFO", access_log: str = "all") -> None:
    global _access_from_status
    _access_from_status = _ACCESS_FROM_STATUS[access_log]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            _FORMAT,
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Werkzeug's own access lines are plain text; ours are JSON (see app/__init__.py).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
