"""Loads the hackathon's seed CSV files with their ids: ``python -m app.seed DIR``.

The files' quirks are handled here: ``is_active`` is ``True``/``False``, timestamps use a
space instead of ``T``, event ``details`` is a JSON string, usernames may repeat. Rows already
present (same id) are kept. Afterwards every id sequence is moved past the largest id.

It migrates first, so it runs as the role that owns the schema when
``SHORTENER_MIGRATE_DATABASE_URL`` is set (a deployment: the service's own role may not create
tables nor move sequences), like ``python -m app.migrate``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg2.extras import Json, execute_batch

from app import sql
from app.config import get_settings
from app.db import Database
from app.logs import configure_logging
from app.migrate import migrate

log = logging.getLogger(__name__)


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        yield from csv.DictReader(handle)


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value else None


def _ts(value: str | None) -> datetime | None:
    value = (value or "").strip()
    return datetime.fromisoformat(value.replace(" ", "T")) if value else None


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes", "t")


def _details(value: str | None) -> Any:
    try:
        parsed = json.loads(value or "{}")
    except ValueError:
        parsed = {"raw": value}
    return Json(parsed if isinstance(parsed, dict) else {"value": parsed})


def load(db: Database, directory: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with db.transaction() as cur:
        users = [
            (_int(r["id"]), r["username"], r["email"], _ts(r.get("created_at")) or datetime.utcnow())
            for r in _rows(directory / "users.csv")
        ]
        execute_batch(cur, sql.SEED_USER, users, page_size=500)
        counts["users"] = len(users)
        urls = [
            (
                _int(r["id"]),
                _int(r.get("user_id")),
                r["short_code"],
                r["original_url"],
                r.get("title") or None,
                _bool(r.get("is_active")),
                _ts(r.get("created_at")),
                _ts(r.get("updated_at")) or _ts(r.get("created_at")),
            )
            for r in _rows(directory / "urls.csv")
        ]
        execute_batch(cur, sql.SEED_URL, urls, page_size=500)
        counts["urls"] = len(urls)
        events = [
            (
                _int(r["id"]),
                _int(r.get("url_id")),
                _int(r.get("user_id")),
                r["event_type"],
                _ts(r.get("timestamp")),
                _details(r.get("details")),
            )
            for r in _rows(directory / "events.csv")
        ]
        execute_batch(cur, sql.SEED_EVENT, events, page_size=500)
        counts["events"] = len(events)
        cur.execute(sql.RESET_SEQUENCES)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="folder with users.csv, urls.csv, events.csv")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    db = Database(settings.migrate_database_url or settings.database_url, 1, 30.0, settings.db_connect_options)
    try:
        migrate(db, settings)
        counts = load(db, args.directory)
    finally:
        db.close()
    log.info("seed loaded", extra=counts)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
