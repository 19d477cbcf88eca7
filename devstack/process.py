"""Small process and file helpers the dev stack's daemons share."""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from devstack.config import HOST, SERVICE_USER, STOP_TIMEOUT


class StackError(RuntimeError):
    """A service could not be installed, started or stopped."""


def log(message: str) -> None:
    # stdout is reserved for the `export` lines that `make dev` evals.
    print(f"[devstack] {message}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    as_service_user: bool = False,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, Any] = {}
    if as_service_user and os.geteuid() == 0:
        kwargs.update(user=SERVICE_USER, group=SERVICE_USER, extra_groups=[])
    # Output goes through a temporary file, not a pipe: a daemon that kept an
    # inherited pipe open would make us (and `eval "$(...)"`) wait forever.
    with open(os.devnull, "rb") as stdin, _tempfile() as out:
        proc = subprocess.run(  # noqa: S603 (our own commands: the servers and their tools)
            list(cmd),
            stdin=stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            check=False,
            **kwargs,
        )
        out.seek(0)
        output = out.read().decode(errors="replace")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, output, "")
    if check and proc.returncode != 0:
        raise StackError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{output.strip()[-4000:]}")
    return result


@contextlib.contextmanager
def _tempfile() -> Iterator[IO[bytes]]:
    with tempfile.TemporaryFile() as handle:
        yield handle


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def read_pid(pidfile: Path, expect: str) -> int | None:
    """PID from a pidfile if that process is alive and is `expect`."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not pid_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return pid
    # A recycled PID belongs to someone else; do not report or kill it.
    return pid if expect in cmdline else None


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def check_port_free(port: int, env_name: str) -> None:
    if port_open(port):
        raise StackError(
            f"port {port} on {HOST} is taken by a process this stack does not know (another "
            f"program, or a server whose state directory was deleted: find it with `ss -ltnp`); "
            f"set {env_name} to a free port"
        )


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, log_file: Path | None = None, interval: float = 0.05
) -> None:
    """Poll `check` until it returns true; any exception it raises means "not yet"."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if check():
                return
        except Exception as exc:  # any failure means "not yet"
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error}" if last_error else ""
            last_lines = f"\n--- {log_file} ---\n{tail(log_file)}" if log_file else ""
            raise StackError(f"{what} did not answer within {timeout:.0f}s{detail}{last_lines}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        port = int(value)
    except ValueError:
        raise StackError(f"{name}={value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise StackError(f"{name}={value!r} is not a port number")
    return port


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write atomically, never readable by others, not even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def new_password() -> str:
    # Letters and digits only: safe unquoted in URLs, userlist.txt and SQL.
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


# --------------------------------------------------------------------------
# The stack


def stop_pid(name: str, pid: int | None, sig: signal.Signals) -> None:
    """Send `sig` and wait for the process to go; SIGKILL it after STOP_TIMEOUT."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            log(f"{name} (pid {pid}) ignored {sig.name}; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.02)
