"""Versioned SQL migrations, applied under a PostgreSQL advisory lock.

All pending migrations run in one transaction that first takes a transaction-level advisory
lock (session-level locks do not survive PgBouncer's transaction pooling). Three instances
starting at once therefore apply each migration exactly once: the others wait, then find
nothing left to do.

Run by hand with ``python -m app.migrate`` (as ``SHORTENER_MIGRATE_DATABASE_URL``'s role when it
is set: the one that owns the schema); the app also runs it at start-up unless
``SHORTENER_MIGRATE_ON_START`` is false, as the deployment sets it.
"""

from __future__ import annotations

import logging
import sys
from importlib import resources

from app import sql
from app.config import Settings, get_settings
from app.db import Database

log = logging.getLogger(__name__)


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("app") / "migrations"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


def migrate(db: Database, settings: Settings) -> list[str]:
    """Applies what is pending; returns the versions applied now."""
    applied_now: list[str] = []
    with db.transaction() as cur:
        cur.execute(sql.MIGRATION_LOCK)
        cur.execute(sql.CREATE_MIGRATIONS_TABLE)
        cur.execute(sql.APPLIED_MIGRATIONS)
        done = {row["version"] for row in cur.fetchall()}
        for version, text in migration_files():
            if version in done:
                continue
            log.info("applying migration", extra={"version": version})
            cur.execute(text)
            cur.execute(sql.RECORD_MIGRATION, (version,))
            applied_now.append(version)
        cur.execute(
            sql.SET_ROLE_TIMEOUTS,
            (f"{settings.db_statement_timeout_ms}ms", f"{settings.db_statement_timeout_ms * 2}ms"),
        )
    return applied_now


def main() -> int:
    from app.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    db = Database(settings.migrate_database_url or settings.database_url, 1, 30.0, settings.db_connect_options)
    try:
        applied = migrate(db, settings)
    finally:
        db.close()
    log.info("migrations done", extra={"applied": applied})
    return 0


if __name__ == "__main__":
    sys.exit(main())
