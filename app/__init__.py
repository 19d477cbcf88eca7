"""The shortener service: a Flask application factory."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from app import access, errors, limits, logs, metrics, urlpolicy
from app.addresses import Networks
from app.cache import Cache, CircuitBreaker
from app.config import Settings, get_settings
from app.converters import IdConverter
from app.db import Database
from app.logs import configure_logging
from app.services import Services


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.access_log)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.json.sort_keys = False  # type: ignore[attr-defined]

    db = Database(
        settings.database_url,
        settings.db_pool_max,
        settings.db_pool_timeout,
        settings.db_connect_options,
    )
    cache = Cache(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        connect_timeout=settings.redis_connect_timeout,
        breaker=CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_reset_seconds),
        ttl=settings.cache_ttl_seconds,
        negative_ttl=settings.cache_negative_ttl_seconds,
        tombstone_ttl=settings.cache_tombstone_seconds,
        stream=settings.click_stream,
    )
    app.extensions["shortener"] = Services(
        settings, db, cache, Networks(settings.trusted_proxies), Networks(settings.metrics_allow)
    )
    app.extensions["urlpolicy"] = urlpolicy.UrlPolicy.from_settings(
        settings.public_base_url, settings.own_hostnames.split(","), settings.url_blocklist_file
    )
    metrics.worker_started(settings.db_pool_max, cache.enabled)

    if settings.migrate_on_start:
        from app.migrate import migrate

        applied = migrate(db, settings)
        if applied:
            logging.getLogger(__name__).info("schema migrated", extra={"applied": applied})

    app.url_map.converters["id"] = IdConverter
    from app.api import events, exports, health, keys, redirect, stats, urls, users, web
    from app.openapi import bp as openapi_bp

    for blueprint in (
        users.bp,
        urls.bp,
        events.bp,
        keys.bp,
        stats.bp,
        exports.bp,
        health.bp,
        metrics.bp,
        openapi_bp,
        web.bp,
        redirect.bp,
    ):
        app.register_blueprint(blueprint)
    errors.register(app)
    # Hook order matters: request id first, then who is calling, then that caller's limits.
    _instrument(app)
    access.register(app)
    limits.init(app, settings)
    return app


def _instrument(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        g.request_id = logs.request_id(request.headers.get("X-Request-ID", ""))

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.observe_request(request.method, endpoint, response.status_code, elapsed)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        if logs.wants_access_line(response.status_code):
            logs.access_line(
                g.get("request_id", ""),
                request.method,
                request.path,
                response.status_code,
                elapsed,
                access.address(),
            )
        return response
