"""The service under Gunicorn, as deployed: real HTTP to subprocesses using app/gunicorn_conf.py.

Covers what only shows with several processes: three instances migrating one empty database
at once, Prometheus multiprocess metrics summed over workers, JSON access logs with request
ids on stderr, and a graceful SIGTERM that lets in-flight requests finish.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.migrate import migration_files
from devstack import DevStack
from tests.conftest import make_settings
from tests.http_helpers import (
    Process,
    free_port,
    run_gunicorn,
    start_gunicorn,
    wait_for,
    wait_healthy,
)

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def _problems_in_log(text: str) -> list[str]:
    """Lines that say something went wrong: app errors, tracebacks, Gunicorn errors."""
    bad = []
    for line in text.splitlines():
        if (
            "Traceback" in line
            or '"level": "ERROR"' in line
            or '"level": "CRITICAL"' in line
            or "[ERROR]" in line
            or "[CRITICAL]" in line
        ):
            bad.append(line)
    return bad


# --- (a) three instances, one empty database --------------------------------------------------


def test_three_instances_starting_at_once_migrate_an_empty_database_once(stack: DevStack, tmp_path: Path) -> None:
    stack.reset_database()
    stack.flush_redis()
    ports = [free_port() for _ in range(3)]
    while len(set(ports)) < 3:
        ports = [free_port() for _ in range(3)]
    env = stack.env()
    barrier = threading.Barrier(3)
    instances: list[Process] = []
    lock = threading.Lock()

    def launch(port: int) -> None:
        barrier.wait()
        instance = start_gunicorn(
            {**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"metrics-{port}")}, port, log_dir=tmp_path
        )
        with lock:
            instances.append(instance)

    threads = [threading.Thread(target=launch, args=(port,)) for port in ports]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(instances) == 3
        for instance in instances:
            wait_healthy(instance.base_url, instance.proc, instance.log_path, 60)

        conn = psycopg2.connect(stack.direct_database_url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")
                rows = cur.fetchall()
        finally:
            conn.close()
        expected = [name for name, _ in migration_files()]
        assert expected, "no migration files found"
        assert rows == [(version, 1) for version in expected]

        # Exactly one instance applied the migrations; the other two found nothing to do.
        applied_by = [
            instance.port
            for instance in instances
            if any(r.get("message") == "schema migrated" for r in instance.log_records())
        ]
        assert len(applied_by) == 1, applied_by
        for instance in instances:
            assert _problems_in_log(instance.log_text()) == [], instance.log_text()[-3000:]

        # Every instance serves the one schema: a user made through one is seen by the others.
        made = requests.post(
            f"{instances[0].base_url}/users", json={"username": "ada", "email": "ada@example.com"}, timeout=10
        )
        assert made.status_code == 201, made.text
        for instance in instances[1:]:
            seen = requests.get(f"{instance.base_url}/users/{made.json()['id']}", timeout=10)
            assert seen.status_code == 200
            assert seen.json() == made.json()
    finally:
        for instance in instances:
            instance.stop()
        # Leave a migrated schema for the rest of the suite, whatever happened above.
        create_app(make_settings(stack)).extensions["shortener"].db.close()


# --- one shared instance for (b) and (c) --------------------------------------------------------


@pytest.fixture(scope="module")
def server(stack: DevStack, _schema: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    log_dir = tmp_path_factory.mktemp("gunicorn")
    with run_gunicorn({**stack.env(), "PROMETHEUS_MULTIPROC_DIR": str(log_dir / "metrics")}, log_dir=log_dir) as gun:
        yield gun


def _scrape(server: Process) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = requests.get(f"{server.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _requests_counted(server: Process, method: str, endpoint: str, status: str) -> float:
    wanted = {"method": method, "endpoint": endpoint, "status": status}
    return sum(
        value
        for labels, value in _scrape(server).get("shortener_http_requests_total", [])
        if all(labels.get(k) == v for k, v in wanted.items())
    )


def _worker_pids_with_counters(server: Process) -> set[int]:
    metrics_dir = Path(server.extra["metrics_dir"])
    pids = {int(p.stem.rpartition("_")[2]) for p in metrics_dir.glob("counter_*.db")}
    return pids - {server.pid}


def test_metrics_sum_counters_over_all_workers(server: Process, clean: DevStack) -> None:
    before = _requests_counted(server, "GET", "/users", "200")
    sent = 0
    # Parallel fresh connections until both workers have answered some: the sum must then add
    # up the samples of two processes.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(50):
            statuses = list(
                pool.map(lambda _: requests.get(f"{server.base_url}/users", timeout=10).status_code, range(20))
            )
            assert statuses == [200] * 20
            sent += len(statuses)
            if len(_worker_pids_with_counters(server)) >= 2:
                break
    assert len(_worker_pids_with_counters(server)) >= 2, "every request went to one worker"
    assert _requests_counted(server, "GET", "/users", "200") - before == sent

    samples = _scrape(server)
    memory = samples["shortener_instance_resident_memory_bytes"]
    assert len(memory) == 1
    assert memory[0][1] > 10 * 1024 * 1024
    # The master and its two workers.
    assert samples["shortener_instance_processes"][0][1] == 3
    assert samples["shortener_instance_cpu_seconds_total"][0][1] > 0
    # Latency histograms per route, merged across workers too.
    counts = [
        v
        for labels, v in samples["shortener_http_request_duration_seconds_count"]
        if labels["endpoint"] == "/users" and labels["method"] == "GET" and labels["status"] == "200"
    ]
    assert sum(counts) >= sent
    assert {labels["dependency"]: v for labels, v in samples["shortener_dependency_up"]} == {
        "cache": 1.0,
        "database": 1.0,
    }


def _records_with(server: Process, request_id: str) -> list[dict[str, Any]]:
    return [r for r in server.log_records() if r.get("request_id") == request_id]


def test_request_id_is_echoed_or_made_and_logged_as_json(server: Process, clean: DevStack) -> None:
    given = "test-request-0042"
    response = requests.get(f"{server.base_url}/users", headers={"X-Request-ID": given}, timeout=10)
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == given

    made = requests.get(f"{server.base_url}/users/999999", timeout=10)
    assert made.status_code == 404
    made_id = made.headers["X-Request-ID"]
    assert HEX_ID.match(made_id)

    # A header that could forge log lines is not trusted: a fresh id replaces it.
    forged = requests.get(
        f"{server.base_url}/health", headers={"X-Request-ID": 'x" injected {' + "a" * 200}, timeout=10
    )
    assert HEX_ID.match(forged.headers["X-Request-ID"])
    assert requests.get(f"{server.base_url}/health", timeout=10).headers["X-Request-ID"] != made_id

    given_log = wait_for("the log line of the request", lambda: _records_with(server, given))
    assert len(given_log) == 1
    record = given_log[0]
    assert record["method"] == "GET"
    assert record["path"] == "/users"
    assert record["status"] == 200
    assert isinstance(record["duration_ms"], int | float)
    assert record["duration_ms"] >= 0
    assert record["level"] == "INFO"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", record["timestamp"])

    made_log = wait_for("the log line of the 404", lambda: _records_with(server, made_id))
    assert made_log[0]["status"] == 404
    assert made_log[0]["path"] == "/users/999999"

    forged_log = wait_for("the forged request's line", lambda: _records_with(server, forged.headers["X-Request-ID"]))
    assert forged_log[0]["path"] == "/health"

    # Every line the app writes is one JSON object; only Gunicorn's own start-up lines are not.
    for line in server.log_text().splitlines():
        if line.strip() and not line.startswith("{"):
            assert re.match(r"^\[[^\]]+\] \[\d+\] \[(INFO|WARNING|DEBUG)\] ", line), line


# --- (d) SIGTERM -----------------------------------------------------------------------------


def test_sigterm_lets_the_in_flight_request_finish(stack: DevStack, clean: DevStack, tmp_path: Path) -> None:
    instance = start_gunicorn(
        {**stack.env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}, free_port(), log_dir=tmp_path
    )
    blocker = psycopg2.connect(stack.admin_database_url)
    try:
        wait_healthy(instance.base_url, instance.proc, instance.log_path, 30)
        # Hold the users table so that a POST /users stays in flight for as long as we like
        # (well under the 5 s statement timeout the migration gives the app's role).
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        result: dict[str, Any] = {}

        def post() -> None:
            try:
                result["response"] = requests.post(
                    f"{instance.base_url}/users",
                    json={"username": "grace", "email": "grace@example.com"},
                    timeout=30,
                )
            except requests.RequestException as exc:
                result["error"] = exc

        client = threading.Thread(target=post)
        client.start()

        def waiting_on_lock() -> bool:
            with psycopg2.connect(stack.admin_database_url) as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = 'shortener'"
                )
                row = cur.fetchone()
            return bool(row and row[0] >= 1)

        wait_for("the POST to wait on the lock", waiting_on_lock, timeout=3)
        instance.signal(signal.SIGTERM)
        wait_for("the master to take the signal", lambda: "Handling signal: term" in instance.log_text(), 2)
        time.sleep(0.5)
        # Shutting down, but waiting for the request that is still in flight.
        assert client.is_alive()
        assert instance.alive()
        blocker.commit()  # releases the lock: the request can finish now

        client.join(15)
        assert "error" not in result, result.get("error")
        response = result["response"]
        assert response.status_code == 201, response.text
        assert response.json()["username"] == "grace"
        assert instance.proc.wait(20) == 0
    finally:
        blocker.close()
        instance.stop()

    rows = psycopg2.connect(stack.direct_database_url)
    try:
        with rows.cursor() as cur:
            cur.execute("SELECT username FROM users")
            assert cur.fetchall() == [("grace",)]
    finally:
        rows.close()
    log = instance.log_text()
    assert "Handling signal: term" in log
    assert _problems_in_log(log) == [], log[-3000:]


def test_starts_when_the_metrics_directory_does_not_exist_yet(stack: DevStack, _schema: None, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "not" / "there" / "yet"
    instance = start_gunicorn(
        {**stack.env(), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        free_port(),
        log_dir=tmp_path,
        make_metrics_dir=False,
    )
    try:
        wait_healthy(instance.base_url, instance.proc, instance.log_path, 30)
        assert metrics_dir.is_dir()
        assert requests.get(f"{instance.base_url}/metrics", timeout=10).status_code == 200
    finally:
        instance.stop()


# --- (e) the keys profile under Gunicorn ------------------------------------------------------


def test_keys_profile_under_gunicorn_limits_across_workers_and_keeps_keys_out_of_logs(
    stack: DevStack, clean: DevStack, tmp_path: Path
) -> None:
    from app import keys

    env = {
        **stack.env(),
        "SHORTENER_ACCESS_PROFILE": "keys",
        "SHORTENER_RATE_LIMIT_ANONYMOUS_CREATE": "5/minute",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    with run_gunicorn(env, log_dir=tmp_path) as gun:
        admin = keys.generate()
        stored = requests.post(f"{gun.base_url}/keys", json={"admin": True}, timeout=5)
        assert stored.status_code == 401 and stored.headers["WWW-Authenticate"].startswith("Bearer")
        conn = psycopg2.connect(stack.direct_database_url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO api_keys (is_admin, name, prefix, key_hash) VALUES (true, 'g', %s, %s)",
                    (admin[:12], keys.key_hash(admin)),
                )
        finally:
            conn.close()
        auth = {"Authorization": f"Bearer {admin}"}
        assert requests.get(f"{gun.base_url}/users", headers=auth, timeout=5).status_code == 200
        # One budget for the client address, however the requests spread over the two workers
        # (the counters live in Redis).
        with ThreadPoolExecutor(4) as pool:
            statuses = list(
                pool.map(
                    lambda i: requests.post(
                        f"{gun.base_url}/urls", json={"original_url": f"https://e.com/{i}"}, timeout=5
                    ),
                    range(8),
                )
            )
        codes = sorted(r.status_code for r in statuses)
        assert codes == [201] * 5 + [429] * 3
        refused = next(r for r in statuses if r.status_code == 429)
        assert refused.json()["error"] and int(refused.headers["Retry-After"]) >= 1
        metrics = requests.get(f"{gun.base_url}/metrics", timeout=5).text
        assert 'shortener_rate_limited_total{key="",limit="anonymous_create",scope="anonymous"} 3.0' in metrics
    log = gun.log_path.read_text()
    assert admin not in log and admin[4:] not in log
    assert '"status": 401' in log and '"status": 429' in log
    assert not _problems_in_log(log)
