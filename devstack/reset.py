"""Emptying the dev stack's database between tests: drop the app's schemas, keep its role and database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from devstack.config import APP_DATABASE, APP_USER

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

    from devstack.postgres import Postgres

# Drops the `public` schema and any schema the app role owns, and makes a fresh `public` as a
# new database has it.
_DROP_SCHEMAS = f"""
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
"""  # noqa: S608 (a constant: the app role's name)


def reset_database(postgres: Postgres) -> None:
    """Drop every table, sequence, type, ... of the app; keep role and DB (a few ms).

    Backends of other clients that hold locks are terminated after a short wait.
    """
    from psycopg2 import errors

    for attempt in range(2):
        conn = postgres.admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SET lock_timeout = '1s'")
                cur.execute("BEGIN")
                cur.execute(_DROP_SCHEMAS)
                cur.execute("COMMIT")
            return
        except errors.LockNotAvailable:
            with conn.cursor() as cur:
                cur.execute("ROLLBACK")
            if attempt:
                raise
            # Someone (a leaked connection, a dead worker's PgBouncer
            # server connection) sits on a lock: cut them off and retry.
            _terminate_other_backends(conn)
    raise AssertionError("unreachable")


def _terminate_other_backends(conn: PgConnection) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (APP_DATABASE,),
        )
