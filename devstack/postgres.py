"""PostgreSQL of the dev stack: its own cluster (initdb once), its own port, run as the service user."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.config import (
    APP_DATABASE,
    APP_USER,
    PG_PORT_ENV,
    START_TIMEOUT,
    STOP_TIMEOUT,
    SUPERUSER,
)
from devstack.daemon import Daemon
from devstack.packages import find_pg_bindirs
from devstack.process import StackError, check_port_free, log, read_pid, run, tail, wait_for

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

    from devstack.stack import DevStack

INITDB_MARKER = "shortener_initdb_done"
BOOTSTRAP_MARKER = "shortener_bootstrapped"


class Postgres(Daemon):
    name = "postgres"
    label = "PostgreSQL"

    def __init__(self, stack: DevStack) -> None:
        super().__init__(stack)
        self._admin_conn: PgConnection | None = None

    @property
    def port(self) -> int:
        return self.stack.pg_port

    @property
    def data_dir(self) -> Path:
        return self.stack.pg_root / "data"

    @property
    def log_file(self) -> Path:
        return self.stack.pg_root / "postgresql.log"

    def _bindir(self) -> Path:
        bindirs = find_pg_bindirs()
        if not bindirs:
            raise StackError("no PostgreSQL server installed; call ensure_packages() first")
        version_file = self.data_dir / "PG_VERSION"
        if version_file.exists():
            version = version_file.read_text().strip()
            for bindir in bindirs:
                if bindir.parent.name == version:
                    return bindir
            log(f"cluster is PostgreSQL {version}, which is not installed: re-creating it")
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return bindirs[0]

    def _tool(
        self, tool: str, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [str(self._bindir() / tool), *args],
            as_service_user=True,
            cwd=self.stack.pg_root,
            timeout=timeout,
            check=check,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
        )

    def _pg_ctl(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._tool("pg_ctl", "-D", str(self.data_dir), *args, timeout=timeout, check=check)

    def pid(self) -> int | None:
        return read_pid(self.data_dir / "postmaster.pid", "postgres")

    def _running_port(self) -> int | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[3])
        except (OSError, ValueError, IndexError):
            return None

    def _initdb(self) -> None:
        log(f"initdb {self.data_dir}")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        pwfile = self.stack.pg_root / ".pwfile"
        self.stack.write_service_file(pwfile, self.stack.passwords[SUPERUSER] + "\n")
        try:
            self._tool(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # nothing here needs to survive a power cut
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data_dir / "postgresql.conf").open("a") as handle:
            handle.write("\ninclude 'shortener_test.conf'\n")
        self.stack.write_service_file(
            self.data_dir / "pg_hba.conf",
            "# written by devstack/postgres.py: TCP on loopback, passwords only\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n",
        )
        # Written last: an initdb cut short is redone on the next start.
        self.stack.write_service_file(self.data_dir / INITDB_MARKER, "ok\n")

    def _write_conf(self) -> None:
        settings = {
            "listen_addresses": f"'{self.stack.host}'",
            "port": str(self.port),
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
        text = "# written by devstack/postgres.py on every start\n" + "".join(
            f"{key} = {value}\n" for key, value in settings.items()
        )
        self.stack.write_service_file(self.data_dir / "shortener_test.conf", text)

    def start(self) -> None:
        with self.stack.locked():
            self.stack.prepare()
            pid = self.pid()
            if pid is not None and self._running_port() != self.port:
                log(f"PostgreSQL runs on port {self._running_port()}, want {self.port}: restarting")
                self.stop()
                pid = None
            if pid is None:
                self._start_server()
            wait_for("PostgreSQL", self.answers, START_TIMEOUT, self.log_file)
            self._bootstrap_roles()
            pgbouncer = self.stack.pgbouncer
            if pgbouncer.pid() is not None:
                # After an outage PgBouncer turns logins away for
                # server_login_retry seconds: "back" means back for the app.
                wait_for("PostgreSQL through PgBouncer", pgbouncer.app_query, START_TIMEOUT, pgbouncer.log_file)

    def _start_server(self) -> None:
        if not (self.data_dir / INITDB_MARKER).exists():
            self._initdb()
        check_port_free(self.port, PG_PORT_ENV)
        self._write_conf()
        timeout = str(int(START_TIMEOUT))
        result = self._pg_ctl(
            "-l", str(self.log_file), "-w", "-t", timeout, "start", timeout=START_TIMEOUT + 10, check=False
        )
        if result.returncode != 0:
            raise StackError(
                f"PostgreSQL did not start: {result.stdout.strip()}\n--- {self.log_file} ---\n{tail(self.log_file)}"
            )
        self.stack.started.add(self.name)
        self.drop_admin_connection()

    def connect_admin(self, database: str) -> PgConnection:
        """A new superuser connection (autocommit) straight to PostgreSQL."""
        import psycopg2

        conn = psycopg2.connect(
            host=self.stack.host,
            port=self.port,
            user=SUPERUSER,
            password=self.stack.passwords[SUPERUSER],
            dbname=database,
            connect_timeout=3,
            application_name="devstack",
        )
        conn.autocommit = True
        return conn

    def answers(self) -> bool:
        if self.pid() is None:
            raise StackError("postgres process is not running")
        self.connect_admin("postgres").close()
        return True

    def _bootstrap_roles(self) -> None:
        marker = self.data_dir / BOOTSTRAP_MARKER
        if marker.exists():
            return
        from psycopg2 import sql

        conn = self.connect_admin("postgres")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_USER,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(
                    sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(APP_USER)),
                    (self.stack.passwords[APP_USER],),
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
        self.stack.write_service_file(marker, "ok\n")

    def stop(self, mode: str = "fast") -> None:
        """Stop PostgreSQL; mode `immediate` simulates a crash."""
        with self.stack.locked():
            self.drop_admin_connection()
            if self.pid() is None:
                return
            self._pg_ctl("-m", mode, "-w", "-t", str(int(STOP_TIMEOUT)), "stop", timeout=STOP_TIMEOUT + 10)
            self.stack.started.discard(self.name)

    # ---- the kept superuser connection the resets use ------------------------------------------

    def drop_admin_connection(self) -> None:
        if self._admin_conn is not None:
            with contextlib.suppress(Exception):  # already broken: it is gone either way
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
                self.drop_admin_connection()
        self._admin_conn = self.connect_admin(APP_DATABASE)
        return self._admin_conn
