"""Prometheus metrics of the service and the /metrics endpoint.

Under Gunicorn every worker process writes its samples to files in PROMETHEUS_MULTIPROC_DIR
and /metrics adds them up (the client library's multiprocess mode); under the Flask
development server, where that variable is unset, the ordinary in-process registry is used.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable

import psutil
from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "shortener_http_requests_total",
    "HTTP requests answered, by method, route and status.",
    ["method", "endpoint", "status"],
)
HTTP_DURATION = Histogram(
    "shortener_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route and status.",
    ["method", "endpoint", "status"],
    buckets=LATENCY_BUCKETS,
)
CACHE_REQUESTS = Counter(
    "shortener_cache_requests_total",
    "Redirect cache look-ups by result: hit, negative_hit, miss, error, bypass (Redis down).",
    ["result"],
)
CLICKS_QUEUED = Counter("shortener_clicks_queued_total", "Clicks put on the Redis click queue by redirects.")
CLICKS_WRITTEN_DIRECT = Counter(
    "shortener_clicks_written_direct_total",
    "Clicks written straight to PostgreSQL by a redirect because Redis was unavailable.",
)
CLICKS_DRAINED = Counter(
    "shortener_clicks_drained_total",
    "Queued clicks written to PostgreSQL by GET /events so that it misses none.",
)
DB_POOL_IN_USE = Gauge(
    "shortener_db_pool_connections_in_use",
    "PostgreSQL connections checked out of the pools.",
    multiprocess_mode="livesum",
)
DB_POOL_MAX = Gauge(
    "shortener_db_pool_connections_max",
    "Size limit of the PostgreSQL connection pools.",
    multiprocess_mode="livesum",
)
DB_POOL_WAIT = Histogram(
    "shortener_db_pool_wait_seconds",
    "Time spent waiting for a free pooled PostgreSQL connection.",
    buckets=LATENCY_BUCKETS,
)
DB_POOL_TIMEOUTS = Counter(
    "shortener_db_pool_timeouts_total", "Requests that found no free database connection in time."
)
DEPENDENCY_UP = Gauge(
    "shortener_dependency_up",
    "1 when the dependency answered the last call of every live process, 0 otherwise.",
    ["dependency"],
    multiprocess_mode="livemin",
)
RATE_LIMITED = Counter(
    "shortener_rate_limited_total",
    "Requests refused with 429 by the service's rate limits, by kind of caller (admin, user, "
    "anonymous), the key's prefix (empty without a key) and the limit (read, write, create, "
    "anonymous_create, admin).",
    ["scope", "key", "limit"],
)


@functools.cache
def _request_series(method: str, endpoint: str, status: int) -> tuple[Counter, Histogram]:
    # labels() validates and locks on every call: about 5 % of a hot redirect's time under
    # load (loadtests/hotprofile.py). The label sets are few (routes x statuses), so the
    # children are looked up once per worker and kept.
    label = str(status)
    return HTTP_REQUESTS.labels(method, endpoint, label), HTTP_DURATION.labels(method, endpoint, label)


def observe_request(method: str, endpoint: str, status: int, elapsed: float) -> None:
    requests, duration = _request_series(method, endpoint, status)
    requests.inc()
    duration.observe(elapsed)


@functools.cache
def cache_requests(result: str) -> Counter:
    """The CACHE_REQUESTS series of one result, looked up once (see _request_series)."""
    return CACHE_REQUESTS.labels(result)


def rate_limited(scope: str, key_prefix: str, limit: str) -> None:
    RATE_LIMITED.labels(scope, key_prefix, limit).inc()


def worker_started(pool_max: int, cache_enabled: bool) -> None:
    DB_POOL_MAX.set(pool_max)
    DEPENDENCY_UP.labels("cache").set(1 if cache_enabled else 0)
    DEPENDENCY_UP.labels("database").set(1)


class InstanceProcessCollector(Collector):
    """CPU and memory of this whole instance: the Gunicorn master and all its workers.

    The client library's own process metrics describe one process only, which under Gunicorn
    would be whichever worker answered the scrape.
    """

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        me = psutil.Process()
        root = me.parent() if os.environ.get("SHORTENER_UNDER_GUNICORN") else me
        procs = [root] if root is not None else [me]
        with contextlib.suppress(psutil.Error):
            procs += procs[0].children(recursive=True)
        cpu = 0.0
        rss = 0
        for proc in procs:
            try:
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
        yield CounterMetricFamily("shortener_instance_cpu_seconds", "CPU time of the instance's processes.", value=cpu)
        yield GaugeMetricFamily(
            "shortener_instance_resident_memory_bytes",
            "Resident memory of the instance's processes.",
            value=rss,
        )
        yield GaugeMetricFamily("shortener_instance_processes", "Processes of the instance.", value=len(procs))


_INSTANCE_COLLECTOR = InstanceProcessCollector()
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    REGISTRY.register(_INSTANCE_COLLECTOR)


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_INSTANCE_COLLECTOR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    return Response(render(), content_type=CONTENT_TYPE_LATEST)
