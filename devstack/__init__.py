"""The dev stack: a private PostgreSQL + PgBouncer + Redis that the tests, `make dev` and `make seed` start.

Not a test and not the service: `app/` never imports it. Modules: config (ports, paths, users),
process (run, pids, waits), packages (Debian packages), daemon (what each server offers),
postgres / pgbouncer / redis (one server each), reset (emptying between tests), stack (all of
them together: `DevStack`), cli (``python -m devstack up|down|env|status|reset``).
"""

from devstack.config import (
    APP_DATABASE,
    APP_USER,
    BASE_DIR_ENV,
    PG_PORT_ENV,
    PGBOUNCER_PORT_ENV,
    REDIS_PORT_ENV,
)
from devstack.packages import ensure_packages
from devstack.process import StackError
from devstack.stack import DevStack

__all__ = [
    "APP_DATABASE",
    "APP_USER",
    "BASE_DIR_ENV",
    "PGBOUNCER_PORT_ENV",
    "PG_PORT_ENV",
    "REDIS_PORT_ENV",
    "DevStack",
    "StackError",
    "ensure_packages",
]
