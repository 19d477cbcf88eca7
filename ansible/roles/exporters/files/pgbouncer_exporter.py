#!/usr/bin/python3
"""Prometheus exporter for PgBouncer's admin console, standard library and psql only.

Debian 12's prometheus-pgbouncer-exporter (1.7) reads SHOW STATS columns that PgBouncer
removed in 1.8 and fails on every scrape against Debian 12's PgBouncer 1.18, so the
exporters role ships this instead. Metric names follow prometheus-community's
pgbouncer_exporter, so its dashboards and alert examples apply.

Settings come from the environment: PGHOST, PGPORT, PGUSER, PGPASSWORD (libpq reads them)
and PGBOUNCER_EXPORTER_LISTEN (ADDRESS:PORT). Each scrape asks PgBouncer afresh; when it
cannot be reached the answer is pgbouncer_up 0, not an error, so that the alert can tell
"PgBouncer is down" from "the exporter is down".
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PSQL_TIMEOUT_SECONDS = 5

# (metric name, column, type, help, scale) per metric of one SHOW command.
POOL_METRICS = (
    ("pools_client_active_connections", "cl_active", "gauge", "Client connections linked to a server connection.", 1),
    ("pools_client_waiting_connections", "cl_waiting", "gauge", "Clients waiting for a server connection.", 1),
    ("pools_server_active_connections", "sv_active", "gauge", "Server connections linked to a client.", 1),
    ("pools_server_idle_connections", "sv_idle", "gauge", "Server connections idle and ready for a client.", 1),
    ("pools_server_used_connections", "sv_used", "gauge", "Server connections idle for too long, to be checked.", 1),
    ("pools_client_maxwait_seconds", "maxwait", "gauge", "Age of the oldest waiting client, in seconds.", 1),
)
STATS_METRICS = (
    ("stats_queries_pooled_total", "total_query_count", "counter", "Queries pooled.", 1),
    ("stats_sql_transactions_pooled_total", "total_xact_count", "counter", "Transactions pooled.", 1),
    ("stats_queries_duration_seconds_total", "total_query_time", "counter", "Time spent on queries.", 1e-6),
    ("stats_client_wait_seconds_total", "total_wait_time", "counter", "Time clients waited for a server.", 1e-6),
    ("stats_received_bytes_total", "total_received", "counter", "Bytes received from clients.", 1),
    ("stats_sent_bytes_total", "total_sent", "counter", "Bytes sent to clients.", 1),
)
DATABASE_METRICS = (
    ("databases_pool_size", "pool_size", "gauge", "Maximum server connections of the pool.", 1),
    ("databases_current_connections", "current_connections", "gauge", "Server connections of the database.", 1),
    ("databases_max_connections", "max_connections", "gauge", "Maximum server connections of the database.", 1),
)


def show(command: str) -> list[dict[str, str]]:
    """Rows of one SHOW command of the admin console, as dictionaries by column."""
    env = dict(os.environ, PGDATABASE="pgbouncer", PGCONNECT_TIMEOUT="3", PGAPPNAME="pgbouncer_exporter")
    # A fixed command; only the SHOW keyword varies, from the constants above.
    result = subprocess.run(  # noqa: S603
        ["/usr/bin/psql", "-X", "--csv", "-c", f"SHOW {command};"],
        env=env,
        capture_output=True,
        text=True,
        timeout=PSQL_TIMEOUT_SECONDS,
        check=True,
    )
    return list(csv.DictReader(io.StringIO(result.stdout)))


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def family(
    name: str,
    kind: str,
    text: str,
    rows: list[dict[str, str]],
    column: str,
    labels: dict[str, str],
    scale: float,
) -> Iterator[str]:
    yield f"# HELP pgbouncer_{name} {text}"
    yield f"# TYPE pgbouncer_{name} {kind}"
    for row in rows:
        raw = row.get(column)
        if raw in (None, ""):
            continue
        label_text = ",".join(f'{label}="{escape(row[source])}"' for label, source in labels.items())
        yield f"pgbouncer_{name}{{{label_text}}} {float(raw) * scale:g}"


def collect() -> str:
    lines: list[str] = []
    try:
        pools = show("POOLS")
        stats = show("STATS")
        databases = show("DATABASES")
    except (OSError, subprocess.SubprocessError) as exc:
        # Why it failed goes to the journal; Prometheus only needs "down".
        stderr = getattr(exc, "stderr", "") or ""
        print(f"pgbouncer_exporter: cannot query PgBouncer: {exc} {stderr.strip()}", flush=True)
        up = 0
    else:
        up = 1
        for name, column, kind, text, scale in POOL_METRICS:
            lines += family(name, kind, text, pools, column, {"database": "database", "user": "user"}, scale)
        for name, column, kind, text, scale in STATS_METRICS:
            lines += family(name, kind, text, stats, column, {"database": "database"}, scale)
        for name, column, kind, text, scale in DATABASE_METRICS:
            lines += family(name, kind, text, databases, column, {"name": "name"}, scale)
    lines = [
        "# HELP pgbouncer_up 1 when PgBouncer's admin console answered this scrape.",
        "# TYPE pgbouncer_up gauge",
        f"pgbouncer_up {up}",
        *lines,
    ]
    return "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        body = collect().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # One line per scrape would flood the journal.
        return


def main() -> None:
    host, _, port = os.environ.get("PGBOUNCER_EXPORTER_LISTEN", "127.0.0.1:9127").rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
