"""GET /health: 200 while the database answers; a missing cache only degrades the service."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app import metrics
from app.db import DatabaseUnavailable
from app.services import services

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Response:
    svc = services()
    try:
        svc.db.ping()
        database = "ok"
        metrics.DEPENDENCY_UP.labels("database").set(1)
    except DatabaseUnavailable:
        database = "unavailable"
        metrics.DEPENDENCY_UP.labels("database").set(0)
    cache = "disabled"
    if svc.cache.enabled:
        # While the breaker is open this answers at once without touching Redis.
        cache = "ok" if svc.cache.ping() else "degraded"
    body = {
        "status": "ok" if database == "ok" else "unavailable",
        "database": database,
        "cache": cache,
        "db_pool": {"in_use": svc.db.in_use, "max": svc.db.max_size},
    }
    response = jsonify(body)
    response.status_code = 200 if database == "ok" else 503
    response.headers["Cache-Control"] = "no-store"
    return response
