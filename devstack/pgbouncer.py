"""PgBouncer of the dev stack, in transaction mode in front of its PostgreSQL, as in production."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from devstack.config import APP_USER, PGBOUNCER_ADMIN_USER, PGBOUNCER_PORT_ENV, START_TIMEOUT, SUPERUSER
from devstack.daemon import Daemon
from devstack.packages import find_pgbouncer
from devstack.process import StackError, check_port_free, read_pid, run, stop_pid, tail, wait_for

# With PostgreSQL down a client waits this long for a server (PgBouncer's default is 120 s):
# a failing test should not hang.
QUERY_WAIT_TIMEOUT = 10


def pgbouncer_version() -> tuple[int, ...]:
    binary = find_pgbouncer()
    if binary is None:
        raise StackError("PgBouncer is not installed; call ensure_packages() first")
    output = run([binary, "--version"]).stdout
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", output)
    return tuple(int(part) for part in match.groups() if part) if match else (0,)


class PgBouncer(Daemon):
    name = "pgbouncer"
    label = "PgBouncer"

    @property
    def port(self) -> int:
        return self.stack.pgbouncer_port

    @property
    def ini_file(self) -> Path:
        return self.stack.pg_root / "pgbouncer.ini"

    @property
    def pid_file(self) -> Path:
        return self.stack.pg_root / "pgbouncer.pid"

    @property
    def log_file(self) -> Path:
        return self.stack.pg_root / "pgbouncer.log"

    def pid(self) -> int | None:
        return read_pid(self.pid_file, "pgbouncer")

    def _write_conf(self) -> None:
        stack = self.stack
        pw = stack.passwords
        userlist = stack.pg_root / "userlist.txt"
        stack.write_service_file(
            userlist, "".join(f'"{user}" "{pw[user]}"\n' for user in (APP_USER, SUPERUSER, PGBOUNCER_ADMIN_USER))
        )
        lines = [
            "; written by devstack/pgbouncer.py on every start",
            "[databases]",
            f"* = host={stack.host} port={stack.pg_port}",
            "",
            "[pgbouncer]",
            f"listen_addr = {stack.host}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {userlist}",
            f"admin_users = {PGBOUNCER_ADMIN_USER}",
            f"stats_users = {PGBOUNCER_ADMIN_USER}",
            "pool_mode = transaction",
            "max_client_conn = 500",
            "default_pool_size = 20",
            "min_pool_size = 0",
            "server_login_retry = 1",
            f"query_wait_timeout = {QUERY_WAIT_TIMEOUT}",
            "ignore_startup_parameters = extra_float_digits",
            f"logfile = {self.log_file}",
            f"pidfile = {self.pid_file}",
            "log_connections = 0",
            "log_disconnections = 0",
        ]
        # The setting exists from 1.21 on (older ones refuse unknown keys);
        # before it there is no prepared-statement support at all: the same 0.
        if pgbouncer_version() >= (1, 21):
            lines.append("max_prepared_statements = 0")
        stack.write_service_file(self.ini_file, "\n".join(lines) + "\n")

    def start(self) -> None:
        with self.stack.locked():
            self.stack.prepare()
            if self.pid() is None:
                binary = find_pgbouncer()
                if binary is None:
                    raise StackError("PgBouncer is not installed; call ensure_packages() first")
                check_port_free(self.port, PGBOUNCER_PORT_ENV)
                self._write_conf()
                self.pid_file.unlink(missing_ok=True)
                result = run(
                    [binary, "-d", "-q", str(self.ini_file)], as_service_user=True, cwd=self.stack.pg_root, check=False
                )
                if result.returncode != 0:
                    raise StackError(
                        f"PgBouncer did not start: {result.stdout.strip()}\n"
                        f"--- {self.log_file} ---\n{tail(self.log_file)}"
                    )
                self.stack.started.add(self.name)
            wait_for("PgBouncer", self.answers, START_TIMEOUT, self.log_file)

    def _query(self, url: str, statement: str) -> bool:
        import psycopg2

        conn = psycopg2.connect(url, connect_timeout=3)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement)
                cur.fetchall()
        finally:
            conn.close()
        return True

    def answers(self) -> bool:
        if self.pid() is None:
            raise StackError("pgbouncer process is not running")
        return self._query(self.stack.pgbouncer_admin_url, "SHOW VERSION")

    def app_query(self) -> bool:
        """The app's role gets a PostgreSQL server through PgBouncer (a query, not just a login)."""
        return self._query(self.stack.database_url, "SELECT 1")

    def stop(self) -> None:
        with self.stack.locked():
            # SIGTERM is PgBouncer's immediate shutdown; SIGINT would wait for
            # every client to go away, which a leaked test connection never does.
            stop_pid(self.label, self.pid(), signal.SIGTERM)
            self.pid_file.unlink(missing_ok=True)
            self.stack.started.discard(self.name)
