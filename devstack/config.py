"""Where the dev stack lives, which ports it takes and who it runs as: one home for each."""

from __future__ import annotations

from pathlib import Path

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

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
