"""The dev stack: PostgreSQL + PgBouncer (transaction pooling) + Redis under one base directory.

The stack lives under one base directory (default ``<repo>/.test-services``, overridable with
``SHORTENER_TEST_SERVICES_DIR``) and listens on loopback only, on ports of its own so that it
never clashes with a system PostgreSQL, PgBouncer or Redis (the Debian packages' own services
are never used).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack import reset
from devstack.config import (
    APP_DATABASE,
    APP_USER,
    BASE_DIR_ENV,
    DEFAULT_BASE_DIR,
    DEFAULT_PG_PORT,
    DEFAULT_PGBOUNCER_PORT,
    DEFAULT_REDIS_PORT,
    HOST,
    PG_PORT_ENV,
    PGBOUNCER_ADMIN_USER,
    PGBOUNCER_PORT_ENV,
    REDIS_PORT_ENV,
    SERVICE_USER,
    SUPERUSER,
)
from devstack.daemon import Daemon
from devstack.packages import ensure_packages
from devstack.pgbouncer import PgBouncer
from devstack.postgres import Postgres
from devstack.process import StackError, env_port, log, new_password, run, write_private
from devstack.redis import RedisServer

if TYPE_CHECKING:
    import redis as redis_lib


class DevStack:
    """A private PostgreSQL + PgBouncer + Redis for the tests, `make dev` and `make seed`."""

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
        self.pg_port = pg_port or env_port(PG_PORT_ENV, DEFAULT_PG_PORT)
        self.pgbouncer_port = pgbouncer_port or env_port(PGBOUNCER_PORT_ENV, DEFAULT_PGBOUNCER_PORT)
        self.redis_port = redis_port or env_port(REDIS_PORT_ENV, DEFAULT_REDIS_PORT)
        self.host = HOST
        self.started: set[str] = set()
        self._secrets: dict[str, str] | None = None
        self._prepared = False
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self.postgres = Postgres(self)
        self.pgbouncer = PgBouncer(self)
        self.redis_server = RedisServer(self)
        # In start order; stopped in the reverse order.
        self.daemons: list[Daemon] = [self.postgres, self.pgbouncer, self.redis_server]

    # ---- files ---------------------------------------------------------------------------------

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

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
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
            raise StackError(
                f"running as root but there is no `{SERVICE_USER}` user (it comes with the postgresql package)"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _make_service_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        ids = self._service_ids()
        if ids is not None:
            os.chown(path, *ids)

    def write_service_file(self, path: Path, text: str) -> None:
        """A private file the service user (PostgreSQL, PgBouncer) owns."""
        write_private(path, text)
        ids = self._service_ids()
        if ids is not None:
            os.chown(path, *ids)

    def prepare(self) -> None:
        """Passwords, the service user's directory and each daemon's own (once)."""
        if self._prepared:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not self.secrets_file.exists():
            data = {user: new_password() for user in (SUPERUSER, APP_USER, PGBOUNCER_ADMIN_USER)}
            data["redis"] = new_password()
            write_private(self.secrets_file, json.dumps(data, indent=2) + "\n")
            # New passwords mean any old cluster is unusable: start over.
            shutil.rmtree(self.pg_root, ignore_errors=True)
            self._secrets = None
        self._prepare_pg_root()
        for daemon in self.daemons:
            daemon.prepare()
        self._prepared = True

    def _prepare_pg_root(self) -> None:
        root = self.pg_root
        self._make_service_dir(root)
        if self._service_ids() is None:
            return
        probe = run(["test", "-w", str(root)], as_service_user=True, check=False)
        if probe.returncode == 0:
            return
        # A checkout under /root (mode 0700) is out of the service user's
        # reach; its files then live in /var/tmp, recorded in `pg-root`.
        digest = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:12]
        fallback = Path("/var/tmp") / f"shortener-test-services-{digest}"  # noqa: S108 (private dir, 0700)
        log(f"{SERVICE_USER} cannot reach {root}; using {fallback}")
        shutil.rmtree(root, ignore_errors=True)
        # Left over from a base directory deleted earlier: its passwords are gone.
        shutil.rmtree(fallback, ignore_errors=True)
        self._make_service_dir(fallback)
        (self.base_dir / "pg-root").write_text(f"{fallback}\n")

    # ---- credentials and URLs ------------------------------------------------------------------

    @property
    def passwords(self) -> dict[str, str]:
        if self._secrets is None:
            try:
                self._secrets = json.loads(self.secrets_file.read_text())
            except FileNotFoundError:
                raise StackError(f"no stack under {self.base_dir}; run `python -m devstack up` first") from None
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

    # ---- the whole stack -----------------------------------------------------------------------

    def start(self) -> DevStack:
        """Install what is missing, start what is not running, wait until every daemon answers."""
        with self.locked():
            ensure_packages()
            for daemon in self.daemons:
                daemon.start()
        return self

    def stop(self) -> None:
        with self.locked():
            for daemon in reversed(self.daemons):
                daemon.stop()

    def stop_started(self) -> None:
        """Stop only what this object started (leave a `make dev` stack alone)."""
        with self.locked():
            for daemon in reversed(self.daemons):
                if daemon.name in self.started:
                    daemon.stop()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per daemon: pid (or None), port and whether it answers now."""
        has_secrets = self.secrets_file.exists()
        return {daemon.name: daemon.status(has_secrets) for daemon in self.daemons}

    def close(self) -> None:
        """Close this object's own client connections (servers keep running)."""
        self.postgres.drop_admin_connection()
        self.redis_server.close()

    # ---- one daemon (what the failure tests stop and start) ------------------------------------

    def start_postgres(self) -> None:
        self.postgres.start()

    def stop_postgres(self, mode: str = "fast") -> None:
        """Stop PostgreSQL; mode `immediate` simulates a crash."""
        self.postgres.stop(mode)

    def postgres_pid(self) -> int | None:
        return self.postgres.pid()

    def start_pgbouncer(self) -> None:
        self.pgbouncer.start()

    def stop_pgbouncer(self) -> None:
        self.pgbouncer.stop()

    def pgbouncer_pid(self) -> int | None:
        return self.pgbouncer.pid()

    def start_redis(self) -> None:
        self.redis_server.start()

    def stop_redis(self) -> None:
        self.redis_server.stop()

    def redis_pid(self) -> int | None:
        return self.redis_server.pid()

    def redis(self) -> redis_lib.Redis:
        """A client for the stack's Redis (kept and reused)."""
        return self.redis_server.client()

    # ---- emptying between tests ----------------------------------------------------------------

    def reset_database(self) -> None:
        """Drop every table, sequence, type, ... of the app; keep role and database (a few ms)."""
        reset.reset_database(self.postgres)

    def flush_redis(self) -> None:
        self.redis().flushall()
