"""Private PostgreSQL, PgBouncer and Redis for the test suite and ``make dev``.

The stack lives under one base directory (default ``<repo>/.test-services``,
overridable with ``SHORTENER_TEST_SERVICES_DIR``) and listens on loopback only,
on ports of its own so that it never clashes with a system PostgreSQL, PgBouncer
or Redis (the Debian packages' own services are never used).

Command line (used by ``make dev``)::

    eval "$(python -m tests.services up)"   # install if missing, start, print exports
    python -m tests.services env            # print the exports again
    python -m tests.services status         # exit 0 only when all three answer
    python -m tests.services reset          # empty the database and Redis
    python -m tests.services down           # stop all three

The servers are started daemonised (``pg_ctl start``, ``pgbouncer -d``,
``redis-server --daemonize yes``), so they outlive the process that started
them until ``down`` or :meth:`Services.stop` is called.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis as redis_lib
    from psycopg2.extensions import connection as PgConnection

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE_DIR = REPO_ROOT / ".test-services"

BASE_DIR_ENV = "SHORTENER_TEST_SERVICES_DIR"
PG_PORT_ENV = "SHORTENER_TEST_PG_PORT"
PGBOUNCER_PORT_ENV = "SHORTENER_TEST_PGBOUNCER_PORT"
REDIS_PORT_ENV = "SHORTENER_TEST_REDIS_PORT"

DEFAULT_PG_PORT = 55432
DEFAULT_PGBOUNCER_PORT = 56432
DEFAULT_REDIS_PORT = 56379

HOST = "127.0.0.1"
APP_USER = "shortener"
APP_DATABASE = "shortener"
SUPERUSER = "postgres"
PGBOUNCER_ADMIN_USER = "pgbouncer_admin"
# PostgreSQL refuses to run as root; when we are root everything PostgreSQL
# and PgBouncer touch belongs to the account the Debian package creates.
SERVICE_USER = "postgres"

APT_PACKAGES = ("postgresql", "pgbouncer", "redis-server")
PGBOUNCER_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
REDIS_CANDIDATES = ("/usr/bin/redis-server", "/usr/sbin/redis-server")

INITDB_MARKER = "shortener_initdb_done"

START_TIMEOUT = 30.0
PGBOUNCER_QUERY_WAIT_TIMEOUT = 10
STOP_TIMEOUT = 30.0


class ServicesError(RuntimeError):
    """A service could not be installed, started or stopped."""


def _log(message: str) -> None:
    # stdout is reserved for the `export` lines that `make dev` evals.
    print(f"[services] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Packages


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def find_pg_bindirs() -> list[Path]:
    """Server bin directories of every installed PostgreSQL, newest first."""
    found = [
        bindir
        for bindir in Path("/usr/lib/postgresql").glob("*/bin")
        if all((bindir / tool).exists() for tool in ("initdb", "pg_ctl", "postgres"))
    ]
    return sorted(found, key=lambda bindir: _version_key(bindir.parent), reverse=True)


def _find_executable(name: str, candidates: Sequence[str]) -> str | None:
    # /usr/sbin is not on a non-root user's PATH, where pgbouncer lives.
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


def find_pgbouncer() -> str | None:
    return _find_executable("pgbouncer", PGBOUNCER_CANDIDATES)


def find_redis_server() -> str | None:
    return _find_executable("redis-server", REDIS_CANDIDATES)


def missing_packages() -> list[str]:
    missing = []
    if not find_pg_bindirs():
        missing.append("postgresql")
    if find_pgbouncer() is None:
        missing.append("pgbouncer")
    if find_redis_server() is None:
        missing.append("redis-server")
    return missing


def ensure_packages() -> list[str]:
    """Install PostgreSQL, PgBouncer and Redis from Debian if any is missing.

    Returns the packages that were installed (empty when nothing was needed).
    The packages' own services are kept from starting during the install by a
    temporary ``policy-rc.d``; they would listen on the standard ports, which
    this harness never uses.
    """
    missing = missing_packages()
    if not missing:
        return []
    if os.geteuid() != 0:
        raise ServicesError(
            f"missing packages {' '.join(missing)}; install them as root: "
            f"apt-get install -y --no-install-recommends {' '.join(APT_PACKAGES)}"
        )
    if shutil.which("apt-get") is None:
        raise ServicesError(f"missing packages {' '.join(missing)} and no apt-get to install them")
    _log(f"installing {' '.join(missing)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", NEEDRESTART_MODE="l")
    apt_options = [
        "-o",
        "DPkg::Lock::Timeout=300",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        # Exit code 101 tells invoke-rc.d "action not allowed": the packages
        # install without starting (or enabling at runtime) their daemons.
        policy.write_text("#!/bin/sh\n# temporary, written by tests/services.py\nexit 101\n")
        policy.chmod(0o755)
    try:
        _run(["apt-get", *apt_options, "update"], env=env, timeout=600)
        _run(
            ["apt-get", *apt_options, "install", "-y", "--no-install-recommends", *APT_PACKAGES],
            env=env,
            timeout=1200,
        )
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    still_missing = missing_packages()
    if still_missing:
        raise ServicesError(f"still missing after apt-get install: {' '.join(still_missing)}")
    return missing


# --------------------------------------------------------------------------
# Small process helpers


def _run(
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
        proc = subprocess.run(
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
        raise ServicesError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{output.strip()[-4000:]}")
    return result


@contextlib.contextmanager
def _tempfile() -> Iterator[Any]:
    import tempfile

    with tempfile.TemporaryFile() as handle:
        yield handle


def _pid_alive(pid: int) -> bool:
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


def _read_pid(pidfile: Path, expect: str) -> int | None:
    """PID from a pidfile if that process is alive and is `expect`."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _pid_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return pid
    # A recycled PID belongs to someone else; do not report or kill it.
    return pid if expect in cmdline else None


def _port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _check_port_free(port: int, env_name: str) -> None:
    if _port_open(port):
        raise ServicesError(
            f"port {port} on {HOST} is taken by a process this stack does not know (another "
            f"program, or a server whose state directory was deleted: find it with `ss -ltnp`); "
            f"set {env_name} to a free port"
        )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _wait_for(what: str, check: Any, timeout: float, log: Path | None = None, interval: float = 0.05) -> None:
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
            tail = f"\n--- {log} ---\n{_tail(log)}" if log else ""
            raise ServicesError(f"{what} did not answer within {timeout:.0f}s{detail}{tail}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        port = int(value)
    except ValueError:
        raise ServicesError(f"{name}={value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ServicesError(f"{name}={value!r} is not a port number")
    return port


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write atomically, never readable by others, not even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def _password() -> str:
    # Letters and digits only: safe unquoted in URLs, userlist.txt and SQL.
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


# --------------------------------------------------------------------------
# The stack


class Services:
    """A private PostgreSQL + PgBouncer (transaction pooling) + Redis stack."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        pg_port: int | None = None,
        pgbouncer_port: int | None = None,
        redis_port: int | None = None,
    ) -> None:
        if base_dir is None:
            base_dir = os.environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR
        self.base_dir = Path(base_dir).absolute()
        self.pg_port = pg_port or _env_port(PG_PORT_ENV, DEFAULT_PG_PORT)
        self.pgbouncer_port = pgbouncer_port or _env_port(PGBOUNCER_PORT_ENV, DEFAULT_PGBOUNCER_PORT)
        self.redis_port = redis_port or _env_port(REDIS_PORT_ENV, DEFAULT_REDIS_PORT)
        self.host = HOST
        self.started: set[str] = set()
        self._secrets: dict[str, str] | None = None
        self._prepared = False
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._admin_conn: PgConnection | None = None
        self._redis_client: redis_lib.Redis | None = None

    # ---- layout ---------------------------------------------------------

    @property
    def secrets_file(self) -> Path:
        return self.base_dir / "secrets.json"

    @property
    def pg_root(self) -> Path:
        """Directory owned by the service user: data dir, PgBouncer files, logs."""
        pointer = self.base_dir / "pg-root"
        with contextlib.suppress(OSError):
            return Path(pointer.read_text().strip())
        return self.base_dir / "pg"

    @property
    def pg_data(self) -> Path:
        return self.pg_root / "data"

    @property
    def pg_log(self) -> Path:
        return self.pg_root / "postgresql.log"

    @property
    def pgbouncer_ini(self) -> Path:
        return self.pg_root / "pgbouncer.ini"

    @property
    def pgbouncer_pidfile(self) -> Path:
        return self.pg_root / "pgbouncer.pid"

    @property
    def pgbouncer_log(self) -> Path:
        return self.pg_root / "pgbouncer.log"

    @property
    def redis_dir(self) -> Path:
        return self.base_dir / "redis"

    @property
    def redis_pidfile(self) -> Path:
        return self.redis_dir / "redis.pid"

    @property
    def redis_log(self) -> Path:
        return self.redis_dir / "redis.log"

    # ---- credentials and URLs -------------------------------------------

    @property
    def passwords(self) -> dict[str, str]:
        if self._secrets is None:
            try:
                self._secrets = json.loads(self.secrets_file.read_text())
            except FileNotFoundError:
                raise ServicesError(
                    f"no stack under {self.base_dir}; run `python -m tests.services up` first"
                ) from None
        return self._secrets

    def _pg_url(self, user: str, port: int, database: str) -> str:
        return f"postgresql://{user}:{self.passwords[user]}@{self.host}:{port}/{database}"

    @property
    def database_url(self) -> str:
        """The app's URL: the `shortener` role through PgBouncer."""
        return self._pg_url(APP_USER, self.pgbouncer_port, APP_DATABASE)

    @property
    def direct_database_url(self) -> str:
        """The `shortener` role straight to PostgreSQL (no PgBouncer)."""
        return self._pg_url(APP_USER, self.pg_port, APP_DATABASE)

    @property
    def admin_database_url(self) -> str:
        """Superuser straight to PostgreSQL, on the `shortener` database."""
        return self._pg_url(SUPERUSER, self.pg_port, APP_DATABASE)

    @property
    def pgbouncer_admin_url(self) -> str:
        """PgBouncer's admin console (SHOW POOLS, SHOW CONFIG, ...)."""
        return self._pg_url(PGBOUNCER_ADMIN_USER, self.pgbouncer_port, "pgbouncer")

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.passwords['redis']}@{self.host}:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        """The SHORTENER_* variables the app reads to use this stack."""
        return {
            "SHORTENER_DATABASE_URL": self.database_url,
            "SHORTENER_REDIS_URL": self.redis_url,
            # The contract without credentials, as `make dev` serves it; the keys profile's
            # tests set their own.
            "SHORTENER_ACCESS_PROFILE": "open",
        }

    def export_lines(self) -> str:
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env().items())

    # ---- set-up ---------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two pytest runs (or pytest and `make dev`) starting at once must not
        # both run initdb or start a second copy of a server.
        if self._lock_depth == 0:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.base_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _service_ids(self) -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise ServicesError(
                f"running as root but there is no `{SERVICE_USER}` user (it comes with the postgresql package)"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _make_service_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        ids = self._service_ids()
        if ids is not None:
            os.chown(path, *ids)

    def _write_service_file(self, path: Path, text: str) -> None:
        _write_private(path, text)
        ids = self._service_ids()
        if ids is not None:
            os.chown(path, *ids)

    def _prepare(self) -> None:
        if self._prepared:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not self.secrets_file.exists():
            data = {user: _password() for user in (SUPERUSER, APP_USER, PGBOUNCER_ADMIN_USER)}
            data["redis"] = _password()
            _write_private(self.secrets_file, json.dumps(data, indent=2) + "\n")
            # New passwords mean any old cluster is unusable: start over.
            shutil.rmtree(self.pg_root, ignore_errors=True)
            self._secrets = None
        self._prepare_pg_root()
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis_dir.chmod(0o700)
        self._prepared = True

    def _prepare_pg_root(self) -> None:
        root = self.pg_root
        self._make_service_dir(root)
        if self._service_ids() is None:
            return
        probe = _run(["test", "-w", str(root)], as_service_user=True, check=False)
        if probe.returncode == 0:
            return
        # A checkout under /root (mode 0700) is out of the service user's
        # reach; its files then live in /var/tmp, recorded in `pg-root`.
        import hashlib

        digest = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:12]
        fallback = Path("/var/tmp") / f"shortener-test-services-{digest}"
        _log(f"{SERVICE_USER} cannot reach {root}; using {fallback}")
        shutil.rmtree(root, ignore_errors=True)
        # Left over from a base directory deleted earlier: its passwords are gone.
        shutil.rmtree(fallback, ignore_errors=True)
        self._make_service_dir(fallback)
        (self.base_dir / "pg-root").write_text(f"{fallback}\n")

    # ---- PostgreSQL -----------------------------------------------------

    def _pg_bindir(self) -> Path:
        bindirs = find_pg_bindirs()
        if not bindirs:
            raise ServicesError("no PostgreSQL server installed; call ensure_packages() first")
        version_file = self.pg_data / "PG_VERSION"
        if version_file.exists():
            version = version_file.read_text().strip()
            for bindir in bindirs:
                if bindir.parent.name == version:
                    return bindir
            _log(f"cluster is PostgreSQL {version}, which is not installed: re-creating it")
            shutil.rmtree(self.pg_data, ignore_errors=True)
        return bindirs[0]

    def _pg_ctl(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(
            [str(self._pg_bindir() / "pg_ctl"), "-D", str(self.pg_data), *args],
            as_service_user=True,
            cwd=self.pg_root,
            timeout=timeout,
            check=check,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
        )

    def postgres_pid(self) -> int | None:
        return _read_pid(self.pg_data / "postmaster.pid", "postgres")

    def _running_pg_port(self) -> int | None:
        try:
            lines = (self.pg_data / "postmaster.pid").read_text().splitlines()
            return int(lines[3])
        except (OSError, ValueError, IndexError):
            return None

    def _initdb(self) -> None:
        _log(f"initdb {self.pg_data}")
        shutil.rmtree(self.pg_data, ignore_errors=True)
        bindir = self._pg_bindir()
        pwfile = self.pg_root / ".pwfile"
        self._write_service_file(pwfile, self.passwords[SUPERUSER] + "\n")
        try:
            _run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.pg_data),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",  # nothing here needs to survive a power cut
                ],
                as_service_user=True,
                cwd=self.pg_root,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            )
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.pg_data / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\ninclude 'shortener_test.conf'\n")
        self._write_service_file(
            self.pg_data / "pg_hba.conf",
            "# written by tests/services.py: TCP on loopback, passwords only\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n",
        )
        # Written last: an initdb cut short is redone on the next start.
        self._write_service_file(self.pg_data / INITDB_MARKER, "ok\n")

    def _write_pg_conf(self) -> None:
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.pg_port),
            # TCP only: no socket in /var/run/postgresql, which may not exist.
            "unix_socket_directories": "''",
            "password_encryption": "'scram-sha-256'",
            # Speed over durability: this data is thrown away all the time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_level": "minimal",
            "max_wal_senders": "0",
            "checkpoint_timeout": "30min",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "ssl": "off",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "logging_collector": "off",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        text = "# written by tests/services.py on every start\n" + "".join(
            f"{key} = {value}\n" for key, value in settings.items()
        )
        self._write_service_file(self.pg_data / "shortener_test.conf", text)

    def start_postgres(self) -> None:
        with self._locked():
            self._prepare()
            pid = self.postgres_pid()
            if pid is not None and self._running_pg_port() != self.pg_port:
                _log(f"PostgreSQL runs on port {self._running_pg_port()}, want {self.pg_port}: restarting")
                self.stop_postgres()
                pid = None
            if pid is None:
                if not (self.pg_data / INITDB_MARKER).exists():
                    self._initdb()
                _check_port_free(self.pg_port, PG_PORT_ENV)
                self._write_pg_conf()
                result = self._pg_ctl(
                    "-l",
                    str(self.pg_log),
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT)),
                    "start",
                    timeout=START_TIMEOUT + 10,
                    check=False,
                )
                if result.returncode != 0:
                    raise ServicesError(
                        f"PostgreSQL did not start: {result.stdout.strip()}\n"
                        f"--- {self.pg_log} ---\n{_tail(self.pg_log)}"
                    )
                self.started.add("postgres")
                self._drop_admin_conn()
            _wait_for("PostgreSQL", self._postgres_answers, START_TIMEOUT, self.pg_log)
            self._bootstrap_roles()
            if self.pgbouncer_pid() is not None:
                # After an outage PgBouncer turns logins away for
                # server_login_retry seconds: "back" means back for the app.
                _wait_for(
                    "PostgreSQL through PgBouncer",
                    self._app_query_through_pgbouncer,
                    START_TIMEOUT,
                    self.pgbouncer_log,
                )

    def _connect_admin(self, database: str) -> PgConnection:
        import psycopg2

        conn = psycopg2.connect(
            host=self.host,
            port=self.pg_port,
            user=SUPERUSER,
            password=self.passwords[SUPERUSER],
            dbname=database,
            connect_timeout=3,
            application_name="tests.services",
        )
        conn.autocommit = True
        return conn

    def _postgres_answers(self) -> bool:
        if self.postgres_pid() is None:
            raise ServicesError("postgres process is not running")
        self._connect_admin("postgres").close()
        return True

    def _bootstrap_roles(self) -> None:
        marker = self.pg_data / "shortener_bootstrapped"
        if marker.exists():
            return
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self._pg_url(SUPERUSER, self.pg_port, "postgres"), connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_USER,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(
                    sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(APP_USER)),
                    (self.passwords[APP_USER],),
                )
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (APP_DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(APP_DATABASE), sql.Identifier(APP_USER)
                        )
                    )
        finally:
            conn.close()
        self._write_service_file(marker, "ok\n")

    def stop_postgres(self, mode: str = "fast") -> None:
        """Stop PostgreSQL; mode `immediate` simulates a crash."""
        with self._locked():
            self._drop_admin_conn()
            if self.postgres_pid() is None:
                return
            self._pg_ctl("-m", mode, "-w", "-t", str(int(STOP_TIMEOUT)), "stop", timeout=STOP_TIMEOUT + 10)
            self.started.discard("postgres")

    # ---- PgBouncer ------------------------------------------------------

    def pgbouncer_pid(self) -> int | None:
        return _read_pid(self.pgbouncer_pidfile, "pgbouncer")

    @staticmethod
    def pgbouncer_version() -> tuple[int, ...]:
        binary = find_pgbouncer()
        if binary is None:
            raise ServicesError("PgBouncer is not installed; call ensure_packages() first")
        output = _run([binary, "--version"]).stdout
        match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", output)
        return tuple(int(part) for part in match.groups() if part) if match else (0,)

    def _write_pgbouncer_conf(self) -> None:
        pw = self.passwords
        self._write_service_file(
            self.pg_root / "userlist.txt",
            "".join(f'"{user}" "{pw[user]}"\n' for user in (APP_USER, SUPERUSER, PGBOUNCER_ADMIN_USER)),
        )
        lines = [
            "; written by tests/services.py on every start",
            "[databases]",
            f"* = host={self.host} port={self.pg_port}",
            "",
            "[pgbouncer]",
            f"listen_addr = {self.host}",
            f"listen_port = {self.pgbouncer_port}",
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {self.pg_root / 'userlist.txt'}",
            f"admin_users = {PGBOUNCER_ADMIN_USER}",
            f"stats_users = {PGBOUNCER_ADMIN_USER}",
            "pool_mode = transaction",
            "max_client_conn = 500",
            "default_pool_size = 20",
            "min_pool_size = 0",
            "server_login_retry = 1",
            # With PostgreSQL down a client waits this long for a server
            # (PgBouncer's default is 120 s): a failing test should not hang.
            f"query_wait_timeout = {PGBOUNCER_QUERY_WAIT_TIMEOUT}",
            "ignore_startup_parameters = extra_float_digits",
            f"logfile = {self.pgbouncer_log}",
            f"pidfile = {self.pgbouncer_pidfile}",
            "log_connections = 0",
            "log_disconnections = 0",
        ]
        # The setting exists from 1.21 on (older ones refuse unknown keys);
        # before it there is no prepared-statement support at all: the same 0.
        if self.pgbouncer_version() >= (1, 21):
            lines.append("max_prepared_statements = 0")
        self._write_service_file(self.pgbouncer_ini, "\n".join(lines) + "\n")

    def start_pgbouncer(self) -> None:
        with self._locked():
            self._prepare()
            if self.pgbouncer_pid() is None:
                binary = find_pgbouncer()
                if binary is None:
                    raise ServicesError("PgBouncer is not installed; call ensure_packages() first")
                _check_port_free(self.pgbouncer_port, PGBOUNCER_PORT_ENV)
                self._write_pgbouncer_conf()
                self.pgbouncer_pidfile.unlink(missing_ok=True)
                result = _run(
                    [binary, "-d", "-q", str(self.pgbouncer_ini)],
                    as_service_user=True,
                    cwd=self.pg_root,
                    check=False,
                )
                if result.returncode != 0:
                    raise ServicesError(
                        f"PgBouncer did not start: {result.stdout.strip()}\n"
                        f"--- {self.pgbouncer_log} ---\n{_tail(self.pgbouncer_log)}"
                    )
                self.started.add("pgbouncer")
            _wait_for("PgBouncer", self._pgbouncer_answers, START_TIMEOUT, self.pgbouncer_log)

    def _pgbouncer_answers(self) -> bool:
        if self.pgbouncer_pid() is None:
            raise ServicesError("pgbouncer process is not running")
        import psycopg2

        conn = psycopg2.connect(self.pgbouncer_admin_url, connect_timeout=3)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SHOW VERSION")
                cur.fetchall()
        finally:
            conn.close()
        return True

    def _app_query_through_pgbouncer(self) -> bool:
        import psycopg2

        conn = psycopg2.connect(self.database_url, connect_timeout=3)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()
        finally:
            conn.close()
        return True

    def stop_pgbouncer(self) -> None:
        with self._locked():
            # SIGTERM is PgBouncer's immediate shutdown; SIGINT would wait for
            # every client to go away, which a leaked test connection never does.
            self._stop_pid("PgBouncer", self.pgbouncer_pid, signal.SIGTERM)
            self.pgbouncer_pidfile.unlink(missing_ok=True)
            self.started.discard("pgbouncer")

    # ---- Redis ----------------------------------------------------------

    def redis_pid(self) -> int | None:
        return _read_pid(self.redis_pidfile, "redis-server")

    def _write_redis_conf(self) -> Path:
        conf = self.redis_dir / "redis.conf"
        text = "\n".join(
            [
                "# written by tests/services.py on every start",
                f"bind {self.host}",
                f"port {self.redis_port}",
                "protected-mode yes",
                f"requirepass {self.passwords['redis']}",
                "daemonize yes",
                f"pidfile {self.redis_pidfile}",
                f"logfile {self.redis_log}",
                f"dir {self.redis_dir}",
                "appendonly no",
                'save ""',
                "databases 16",
                "loglevel notice",
            ]
        )
        _write_private(conf, text + "\n")
        return conf

    def start_redis(self) -> None:
        with self._locked():
            self._prepare()
            if self.redis_pid() is None:
                binary = find_redis_server()
                if binary is None:
                    raise ServicesError("redis-server is not installed; call ensure_packages() first")
                _check_port_free(self.redis_port, REDIS_PORT_ENV)
                conf = self._write_redis_conf()
                self.redis_pidfile.unlink(missing_ok=True)
                result = _run([binary, str(conf)], cwd=self.redis_dir, check=False)
                if result.returncode != 0:
                    raise ServicesError(
                        f"redis-server did not start: {result.stdout.strip()}\n"
                        f"--- {self.redis_log} ---\n{_tail(self.redis_log)}"
                    )
                self.started.add("redis")
            self._redis_client = None
            _wait_for("Redis", self._redis_answers, START_TIMEOUT, self.redis_log)

    def _redis_answers(self) -> bool:
        if self.redis_pid() is None:
            raise ServicesError("redis-server process is not running")
        return bool(self.redis().ping())

    def redis(self) -> redis_lib.Redis:
        """A client for the stack's Redis (kept and reused)."""
        if self._redis_client is None:
            import redis as redis_lib

            # retry=None: redis-py's default retries would add seconds to
            # every failed poll while a server is starting.
            self._redis_client = redis_lib.Redis.from_url(
                self.redis_url, socket_timeout=3, socket_connect_timeout=3, retry=None
            )
        return self._redis_client

    def stop_redis(self) -> None:
        with self._locked():
            if self._redis_client is not None:
                self._redis_client.close()
                self._redis_client = None
            # `save ""`: SIGTERM shuts down at once without writing a dump.
            self._stop_pid("Redis", self.redis_pid, signal.SIGTERM)
            self.redis_pidfile.unlink(missing_ok=True)
            self.started.discard("redis")

    # ---- whole stack ----------------------------------------------------

    def _stop_pid(self, name: str, get_pid: Any, sig: signal.Signals) -> None:
        pid = get_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _pid_alive(pid):
            if time.monotonic() >= deadline:
                _log(f"{name} (pid {pid}) ignored {sig.name}; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.02)

    def start(self) -> Services:
        """Install what is missing, start what is not running, wait until all three answer."""
        with self._locked():
            ensure_packages()
            self.start_postgres()
            self.start_pgbouncer()
            self.start_redis()
        return self

    def stop(self) -> None:
        with self._locked():
            self.stop_pgbouncer()
            self.stop_postgres()
            self.stop_redis()

    def stop_started(self) -> None:
        """Stop only what this object started (leave a `make dev` stack alone)."""
        with self._locked():
            if "pgbouncer" in self.started:
                self.stop_pgbouncer()
            if "postgres" in self.started:
                self.stop_postgres()
            if "redis" in self.started:
                self.stop_redis()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per service: pid (or None), port and whether it answers now."""

        def answers(check: Any) -> bool:
            try:
                return bool(check())
            except Exception:  # down is an answer, not an error
                return False

        has_secrets = self.secrets_file.exists()
        return {
            "postgres": {
                "pid": self.postgres_pid(),
                "port": self.pg_port,
                "answers": has_secrets and answers(self._postgres_answers),
            },
            "pgbouncer": {
                "pid": self.pgbouncer_pid(),
                "port": self.pgbouncer_port,
                "answers": has_secrets and answers(self._pgbouncer_answers),
            },
            "redis": {
                "pid": self.redis_pid(),
                "port": self.redis_port,
                "answers": has_secrets and answers(self._redis_answers),
            },
        }

    # ---- resetting between tests ------------------------------------------

    def _drop_admin_conn(self) -> None:
        if self._admin_conn is not None:
            with contextlib.suppress(Exception):
                self._admin_conn.close()
            self._admin_conn = None

    def admin_connection(self) -> PgConnection:
        """A superuser connection (autocommit) to the `shortener` database, reused."""
        conn = self._admin_conn
        if conn is not None and not conn.closed:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return conn
            except Exception:  # PostgreSQL restarted: reconnect
                self._drop_admin_conn()
        self._admin_conn = self._connect_admin(APP_DATABASE)
        return self._admin_conn

    def reset_database(self) -> None:
        """Drop every table, sequence, type, ... of the app; keep role and DB.

        Drops the `public` schema and any schema the app role owns, and makes
        a fresh `public` as a new database has it (a few ms). Backends of
        other clients that hold locks are terminated after a short wait.
        """
        from psycopg2 import errors

        statement = f"""
            DO $$
            DECLARE s record;
            BEGIN
              FOR s IN
                SELECT n.nspname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
                WHERE n.nspname = 'public' OR r.rolname = '{APP_USER}'
              LOOP
                EXECUTE format('DROP SCHEMA %I CASCADE', s.nspname);
              END LOOP;
            END $$;
            CREATE SCHEMA public AUTHORIZATION pg_database_owner;
            GRANT USAGE ON SCHEMA public TO PUBLIC;
        """
        for attempt in range(2):
            conn = self.admin_connection()
            try:
                with conn.cursor() as cur:
                    cur.execute("SET lock_timeout = '1s'")
                    cur.execute("BEGIN")
                    cur.execute(statement)
                    cur.execute("COMMIT")
                return
            except errors.LockNotAvailable:
                with conn.cursor() as cur:
                    cur.execute("ROLLBACK")
                if attempt:
                    raise
                # Someone (a leaked connection, a dead worker's PgBouncer
                # server connection) sits on a lock: cut them off and retry.
                self._terminate_other_backends(conn)
        raise AssertionError("unreachable")

    def _terminate_other_backends(self, conn: PgConnection) -> None:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (APP_DATABASE,),
            )

    def recreate_database(self) -> None:
        """Slower, fuller reset: DROP DATABASE ... WITH (FORCE) and CREATE it again."""
        import psycopg2
        from psycopg2 import sql

        self._drop_admin_conn()
        conn = psycopg2.connect(self._pg_url(SUPERUSER, self.pg_port, "postgres"), connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                name = sql.Identifier(APP_DATABASE)
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, sql.Identifier(APP_USER)))
        finally:
            conn.close()

    def truncate_tables(self) -> None:
        """Empty every table in `public` and restart sequences; keeps the schema."""
        conn = self.admin_connection()
        with conn.cursor() as cur:
            cur.execute("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'public'")
            tables = [row[0] for row in cur.fetchall()]
            if tables:
                cur.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")

    def flush_redis(self) -> None:
        self.redis().flushall()

    def close(self) -> None:
        """Close this object's own client connections (servers keep running)."""
        self._drop_admin_conn()
        if self._redis_client is not None:
            self._redis_client.close()
            self._redis_client = None


# --------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.services",
        description="Private PostgreSQL + PgBouncer + Redis for tests and `make dev`.",
    )
    parser.add_argument(
        "command",
        choices=("up", "down", "env", "status", "reset"),
        help="up: install if missing, start, print exports; down: stop; "
        "env: print exports; status: show and exit 0 if all answer; reset: empty DB and Redis",
    )
    args = parser.parse_args(argv)
    services = Services()
    try:
        if args.command == "up":
            started = time.monotonic()
            installed = ensure_packages()
            if installed:
                _log(f"installed {' '.join(installed)} in {time.monotonic() - started:.1f}s")
            services.start()
            _log(
                f"up in {time.monotonic() - started:.2f}s: PostgreSQL :{services.pg_port}, "
                f"PgBouncer :{services.pgbouncer_port}, Redis :{services.redis_port} "
                f"(state in {services.base_dir})"
            )
            sys.stdout.write(services.export_lines())
        elif args.command == "down":
            if services.secrets_file.exists() or services.base_dir.exists():
                services.stop()
            _log("down")
        elif args.command == "env":
            sys.stdout.write(services.export_lines())
        elif args.command == "reset":
            services.reset_database()
            services.flush_redis()
            _log("database and Redis emptied")
        else:
            state = services.status()
            for name, info in state.items():
                pid = info["pid"] if info["pid"] is not None else "-"
                answers = "answers" if info["answers"] else "DOWN"
                print(f"{name:<10} port {info['port']:<6} pid {pid!s:<8} {answers}")
            return 0 if all(info["answers"] for info in state.values()) else 3
    except ServicesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        services.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
