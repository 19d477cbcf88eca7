"""Gunicorn settings, from the same environment variables as the app (app/config.py).

gthread workers: the app spends its time waiting on Redis and PostgreSQL, which threads
overlap cheaply; a few processes use both cores.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def _empty_metrics_dir() -> None:
    # Files left by a previous run would add stale samples to every counter. This must run
    # before anything imports the app package: prometheus_client opens its sample files in
    # this directory as soon as app.metrics is imported. A reload (HUP) reads this file again
    # in the same process and must not delete live workers' files.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and not os.environ.get("SHORTENER_METRICS_DIR_READY"):
        os.environ["SHORTENER_METRICS_DIR_READY"] = "1"
        path = Path(directory)
        if path.exists():
            for child in path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        path.mkdir(parents=True, exist_ok=True)


_empty_metrics_dir()
os.environ["SHORTENER_UNDER_GUNICORN"] = "1"

from app.config import get_settings  # noqa: E402 - after the metrics directory exists

_settings = get_settings()

bind = _settings.bind
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread"
# The app (and its migration) loads once in the master; workers fork from it.
preload_app = True
graceful_timeout = _settings.graceful_timeout
timeout = 30
keepalive = 75  # longer than Nginx's upstream keepalive_timeout, so Nginx closes first
# Gunicorn answers a request line, header or header count over its limits with an HTML page
# of its own. Nginx's limits (nginx_large_client_header_buffers, 4k per line) sit well below
# these, so whatever Nginx passes on is accepted here and every refusal is Nginx's JSON one.
limit_request_line = 8190  # Gunicorn's maximum
limit_request_fields = 32768  # Gunicorn's maximum; Nginx bounds the head's size instead
limit_request_field_size = 8190
# Recycle workers now and then, with jitter so that they never all restart together.
max_requests = _settings.max_requests
max_requests_jitter = max(1, _settings.max_requests // 10)
accesslog = None  # the app writes one JSON line per request
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = f"shortener-{bind.rpartition(':')[2]}"


def post_fork(server: Any, worker: Any) -> None:
    # Samples live in one file per process: gauges set in the master must be set again.
    from app import metrics

    services = server.app.wsgi().extensions["shortener"]
    metrics.worker_started(services.settings.db_pool_max, services.cache.enabled)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
