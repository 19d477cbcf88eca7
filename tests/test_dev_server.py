"""Contract rule 8: the service also runs under the Flask development server (make dev)."""

from __future__ import annotations

import sys
from pathlib import Path

import requests

from tests.http_helpers import Process, _spawn, free_port, wait_healthy


def test_runs_under_the_flask_development_server(clean, _schema, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "dev.log"
    env = {**clean.env(), "SHORTENER_BIND": f"127.0.0.1:{port}", "SHORTENER_LOG_LEVEL": "INFO"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = Process(_spawn([sys.executable, "-m", "app"], env, log), log, port)
    try:
        wait_healthy(server.base_url, server.proc, log, timeout=60)
        made = requests.post(f"{server.base_url}/urls", json={"original_url": "https://example.com/dev"}, timeout=5)
        assert made.status_code == 201
        follow = requests.get(f"{server.base_url}/{made.json()['short_code']}", allow_redirects=False, timeout=5)
        assert follow.status_code == 302
        metrics = requests.get(f"{server.base_url}/metrics", timeout=5).text
        assert "shortener_http_requests_total" in metrics and "shortener_instance_resident_memory_bytes" in metrics
    finally:
        server.stop()
    assert any(r.get("path") == "/urls" and r.get("status") == 201 for r in server.log_records())
