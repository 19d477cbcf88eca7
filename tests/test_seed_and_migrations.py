"""Seed loading (python -m app.seed) and migrations under concurrency."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app import migrate as migrations
from app import seed
from app.config import Settings
from app.db import Database
from tests.conftest import make_settings

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seed"


@pytest.fixture
def seed_dir(tmp_path: Path) -> Path:
    if (SEED_DIR / "users.csv").exists():
        return SEED_DIR
    pytest.skip("../shared/seed is not beside the repository")


def test_seed_loads_with_ids_quirks_and_moves_sequences(clean, seed_dir, client, sql, monkeypatch):
    monkeypatch.setenv("SHORTENER_DATABASE_URL", clean.database_url)
    assert seed.main([str(seed_dir)]) == 0
    counts = {t: sql(f"SELECT count(*), max(id) FROM {t}")[0] for t in ("users", "urls", "events")}
    assert counts == {"users": (400, 400), "urls": (2000, 2000), "events": (3422, 3422)}
    # Quirks: True/False strings, a space in timestamps, details as a JSON string.
    first = client.get("/urls/1").get_json()
    assert first["short_code"] == "ENE3UF" and first["is_active"] is False
    assert first["created_at"] == "2025-08-18T05:25:03"
    event = client.get("/events?page=1&per_page=1").get_json()[0]
    assert event["details"] == {"short_code": "ENE3UF", "original_url": "https://relay.cloud/harbor/garden/1"}
    # An inactive seeded link is a 404, an active one redirects.
    assert client.get("/ENE3UF").status_code == 404
    assert client.get("/MTOGkL").status_code == 302
    # The next inserts do not collide with the seeded ids.
    assert client.post("/users", json={"username": "new", "email": "new@x.io"}).get_json()["id"] == 401
    assert client.post("/urls", json={"original_url": "https://x.io/a"}).get_json()["id"] == 2001
    # Loading again keeps what is there.
    assert seed.main([str(seed_dir)]) == 0
    assert sql("SELECT count(*) FROM users")[0][0] == 401


def test_seed_tolerates_odd_values(clean, tmp_path, sql, _schema):
    (tmp_path / "users.csv").write_text("id,username,email,created_at\n1,a,a@x.io,\n2,a,b@x.io,2025-01-01 00:00:00\n")
    (tmp_path / "urls.csv").write_text(
        "id,user_id,short_code,original_url,title,is_active,created_at,updated_at\n"
        "1,,abc,https://x.io,,true,2025-01-01 00:00:00,\n"
    )
    (tmp_path / "events.csv").write_text(
        "id,url_id,user_id,event_type,timestamp,details\n1,1,,created,2025-01-01 00:00:00,not json\n"
        '2,1,1,created,2025-01-01 00:00:00,"[1]"\n'
    )
    db = Database(clean.database_url, 1, 5, make_settings(clean).db_connect_options)
    try:
        assert seed.load(db, tmp_path) == {"users": 2, "urls": 1, "events": 2}
    finally:
        db.close()
    # Repeated usernames are kept: the seed data may have them.
    assert sql("SELECT count(*) FROM users WHERE username = 'a'")[0][0] == 2
    assert sql("SELECT details FROM events ORDER BY id") == [({"raw": "not json"},), ({"value": [1]},)]
    assert sql("SELECT title, user_id FROM urls") == [(None, None)]


def test_seed_command_runs_as_the_schema_owner_when_a_migration_url_is_set(clean, tmp_path, sql, monkeypatch):
    # A deployment's service role may not migrate: the seed (which migrates first) takes the
    # migration URL, as python -m app.migrate does; the service's own URL is not used at all.
    (tmp_path / "users.csv").write_text("id,username,email,created_at\n7,a,a@x.io,2025-01-01 00:00:00\n")
    (tmp_path / "urls.csv").write_text("id,user_id,short_code,original_url,title,is_active,created_at,updated_at\n")
    (tmp_path / "events.csv").write_text("id,url_id,user_id,event_type,timestamp,details\n")
    monkeypatch.setenv("SHORTENER_DATABASE_URL", "postgresql://nobody:wrong@127.0.0.1:1/none")
    monkeypatch.setenv("SHORTENER_MIGRATE_DATABASE_URL", clean.database_url)
    assert seed.main([str(tmp_path)]) == 0
    assert sql("SELECT id, username FROM users") == [(7, "a")]


def test_three_instances_migrating_at_once_apply_each_migration_once(stack):
    stack.reset_database()
    settings = make_settings(stack)
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        db = Database(settings.database_url, 1, 30, settings.db_connect_options)
        try:
            barrier.wait()
            results.append(migrations.migrate(db, settings))
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    versions = [v for v, _ in migrations.migration_files()]
    assert sorted(results, key=len) == [[], [], versions]
    db = Database(settings.database_url, 1, 5, settings.db_connect_options)
    try:
        rows = db.fetch_all("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == versions
        # The role's statement timeout reaches sessions opened through PgBouncer.
        assert db.fetch_one("SHOW statement_timeout")["statement_timeout"] == "5s"
    finally:
        db.close()


def test_migrate_command(stack, monkeypatch, _schema):
    monkeypatch.setenv("SHORTENER_DATABASE_URL", stack.database_url)
    assert migrations.main() == 0
    assert isinstance(Settings(), Settings)


def test_migrate_command_uses_the_migration_url(stack, monkeypatch, _schema):
    # The service's own URL is refused; the migration URL (the schema owner's) is the one used.
    monkeypatch.setenv("SHORTENER_DATABASE_URL", "postgresql://nobody:wrong@127.0.0.1:1/none")
    monkeypatch.setenv("SHORTENER_MIGRATE_DATABASE_URL", stack.database_url)
    assert migrations.main() == 0
