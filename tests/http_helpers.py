"""Real HTTP for tests: free ports, Gunicorn and the click worker as subprocesses.

``run_gunicorn`` starts ``gunicorn -c app/gunicorn_conf.py app.wsgi:app`` from the repository
root, with its stderr (the app's JSON log lines and Gunicorn's own) in a file the test can read,
and stops it when the block ends. ``run_clickworker`` does the same for
``python -m app.clickworker``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent

# Test servers started by these helpers listen in this range, away from the harness's own
# PostgreSQL/PgBouncer/Redis ports and from the deployed instances' 8001-8003.
PORT_RANGE = (59500, 59999)


def free_port(host: str = "127.0.0.1") -> int:
    """A port in PORT_RANGE that nothing listens on or is bound to right now."""
    ports = list(range(PORT_RANGE[0], PORT_RANGE[1] + 1))
    random.shuffle(ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def json_lines(text: str) -> list[dict[str, Any]]:
    """The lines of a log that are JSON objects (Gunicorn's own lines are plain text)."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


@dataclass
class Process:
    """A subprocess whose stderr and stdout go to one log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        return json_lines(self.log_text())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL to this process group if it has not exited in time."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # The group is the one this helper made (start_new_session): the master and
                # its workers, nothing else.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def _spawn(cmd: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    full_env = dict(os.environ)
    full_env.update(env)
    # Output goes to a file, never a pipe nobody reads: a full pipe would stall the server.
    with open(log_path, "ab") as log, open(os.devnull, "rb") as stdin:
        return subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=full_env,
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def gunicorn_command() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", "app/gunicorn_conf.py", "app.wsgi:app"]


def gunicorn_env(base: Mapping[str, str], port: int, metrics_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The variables one instance needs on top of ``base`` (database and Redis URLs)."""
    return {
        "SHORTENER_BIND": f"127.0.0.1:{port}",
        "SHORTENER_WORKERS": "2",
        "SHORTENER_THREADS": "4",
        "SHORTENER_LOG_LEVEL": "INFO",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **base,
    }


def wait_healthy(base_url: str, proc: subprocess.Popen[bytes] | None, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with {proc.returncode} before {base_url} answered:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
        try:
            response = requests.get(f"{base_url}/health", timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(
        f"{base_url}/health did not answer 200 within {timeout:.0f}s ({last}):\n"
        + log_path.read_text(errors="replace")[-4000:]
    )


def start_gunicorn(
    env: Mapping[str, str],
    port: int,
    *,
    log_dir: str | os.PathLike[str] | None = None,
    make_metrics_dir: bool = True,
) -> Process:
    """Starts an instance and returns at once (see ``wait_healthy``).

    The metrics directory is made first, as systemd's RuntimeDirectory= does in production.
    """
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="shortener-gunicorn-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    metrics_dir = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or log_dir / f"metrics-{port}")
    if make_metrics_dir:
        metrics_dir.mkdir(parents=True, exist_ok=True)
    full = gunicorn_env(env, port, metrics_dir)
    log_path = log_dir / f"gunicorn-{port}.log"
    proc = _spawn(gunicorn_command(), full, log_path)
    return Process(proc, log_path, port, {"metrics_dir": metrics_dir})


@contextlib.contextmanager
def run_gunicorn(
    env: Mapping[str, str],
    port: int | None = None,
    *,
    log_dir: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> Iterator[Process]:
    """A Gunicorn instance that answers /health with 200 inside the block.

    ``env`` needs SHORTENER_DATABASE_URL and SHORTENER_REDIS_URL (``DevStack.env()``); it may
    override any of ``gunicorn_env``'s defaults (2 workers, 4 threads, INFO logs).
    """
    instance = start_gunicorn(env, port or free_port(), log_dir=log_dir)
    try:
        wait_healthy(instance.base_url, instance.proc, instance.log_path, timeout)
        yield instance
    finally:
        instance.stop()


def start_clickworker(
    env: Mapping[str, str], *, log_dir: str | os.PathLike[str] | None = None, name: str = "test-clickworker"
) -> Process:
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="shortener-clickworker-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    metrics_port = free_port()
    full = {
        "SHORTENER_CLICKWORKER_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "SHORTENER_CLICKWORKER_NAME": name,
        "SHORTENER_LOG_LEVEL": "INFO",
        **env,
    }
    log_path = log_dir / f"clickworker-{metrics_port}.log"
    proc = _spawn([sys.executable, "-m", "app.clickworker"], full, log_path)
    return Process(proc, log_path, metrics_port)


def wait_metrics(worker: Process, timeout: float = 20.0) -> None:
    """Until the click worker's metrics endpoint answers: the process is up and configured."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"click worker exited with {worker.proc.returncode}:\n{worker.log_text()[-4000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{worker.base_url}/metrics", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"click worker metrics did not answer within {timeout:.0f}s:\n{worker.log_text()[-4000:]}")


@contextlib.contextmanager
def run_clickworker(env: Mapping[str, str], **kwargs: Any) -> Iterator[Process]:
    worker = start_clickworker(env, **kwargs)
    try:
        wait_metrics(worker)
        yield worker
    finally:
        worker.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Polls check() until it returns something true, and returns that; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
