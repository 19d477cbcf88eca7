"""API keys: their format, hashing and storage, and the command line that manages them.

A key is ``shk_`` followed by 40 characters [A-Za-z0-9] (about 238 random bits). Only its
SHA-256 is stored: a key is a random secret, not a password, so a slow hash would add cost
to every request and no safety (docs/architecture.md, "Access"). Its first 12 characters
(the prefix) identify it in listings and logs.

Command line (the deployment calls ``ensure-admin``; docs/deployment.md)::

    python -m app.keys ensure-admin --name NAME < keyfile   # "created" or "unchanged"
    python -m app.keys create (--admin | --user-id N) --name NAME   # prints the new key
    python -m app.keys list
    python -m app.keys revoke ID_OR_PREFIX

It reads the same SHORTENER_* environment as the service and, where the service migrates on
start (SHORTENER_MIGRATE_ON_START), applies pending migrations first.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import secrets
import string
import sys
from collections.abc import Sequence
from typing import Any

from app import sql
from app.config import get_settings
from app.db import Database, DatabaseUnavailable

KEY_PREFIX = "shk_"
KEY_RANDOM_LENGTH = 40
KEY_PATTERN = re.compile(r"^shk_[A-Za-z0-9]{40}$")
SHOWN_PREFIX_LENGTH = 12
_ALPHABET = string.ascii_letters + string.digits


def generate() -> str:
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(KEY_RANDOM_LENGTH))


def is_well_formed(key: str) -> bool:
    return KEY_PATTERN.fullmatch(key) is not None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def shown_prefix(key: str) -> str:
    return key[:SHOWN_PREFIX_LENGTH]


def store(db: Database, key: str, *, user_id: int | None, is_admin: bool, name: str) -> dict[str, Any]:
    """Stores the hash of ``key``; returns the row (which never holds the key)."""
    row = db.fetch_one(
        sql.INSERT_KEY,
        {
            "user_id": None if is_admin else user_id,
            "is_admin": is_admin,
            "name": name,
            "prefix": shown_prefix(key),
            "key_hash": key_hash(key),
        },
    )
    assert row is not None  # INSERT ... RETURNING always returns the row
    return row


def create(db: Database, *, user_id: int | None, is_admin: bool, name: str) -> tuple[str, dict[str, Any]]:
    """A new key: the secret (to show once) and its row."""
    key = generate()
    return key, store(db, key, user_id=user_id, is_admin=is_admin, name=name)


def find(db: Database, key: str) -> dict[str, Any] | None:
    """The row of a well-formed key, revoked or not; None for an unknown one."""
    return db.fetch_one(sql.KEY_BY_HASH, (key_hash(key),))


def revoke(db: Database, key_id: int) -> dict[str, Any] | None:
    return db.fetch_one(sql.REVOKE_KEY, (key_id,))


# --- command line -------------------------------------------------------------------------


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _ensure_admin(db: Database, args: argparse.Namespace) -> str:
    key = sys.stdin.read().strip()
    if not is_well_formed(key):
        # Never echo the input: it may be a secret with a typo in it.
        raise CliError("the key on stdin does not match ^shk_[A-Za-z0-9]{40}$", 2)
    row = find(db, key)
    if row is None:
        store(db, key, user_id=None, is_admin=True, name=args.name)
        return "created"
    if row["revoked_at"] is not None:
        raise CliError(f"key {row['prefix']} (id {row['id']}) was revoked; generate a new admin key")
    if not row["is_admin"]:
        raise CliError(f"key {row['prefix']} (id {row['id']}) exists as a user's key, not an admin key")
    return "unchanged"


def _create(db: Database, args: argparse.Namespace) -> str:
    if args.user_id is not None and db.fetch_one(sql.USER_EXISTS, (args.user_id,)) is None:
        raise CliError(f"user {args.user_id} does not exist")
    key, _ = create(db, user_id=args.user_id, is_admin=args.admin, name=args.name)
    return key


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def _list(db: Database, args: argparse.Namespace) -> str:
    rows = db.fetch_all(sql.LIST_KEYS, {"user_id": None, "limit": None, "offset": 0})
    lines = ["id\tprefix\towner\tname\tcreated_at\tlast_used_at\trevoked_at"]
    for r in rows:
        owner = "admin" if r["is_admin"] else f"user:{r['user_id']}"
        lines.append(
            "\t".join(
                _fmt(v)
                for v in (r["id"], r["prefix"], owner, r["name"], r["created_at"], r["last_used_at"], r["revoked_at"])
            )
        )
    return "\n".join(lines)


def _revoke(db: Database, args: argparse.Namespace) -> str:
    target: str = args.key
    if target.isdigit():
        ids = [int(target)]
    elif is_well_formed(target):
        row = find(db, target)
        ids = [row["id"]] if row else []
    else:
        ids = [r["id"] for r in db.fetch_all(sql.KEYS_BY_PREFIX, (target,))]
    if len(ids) > 1:
        raise CliError(f"prefix {target} matches keys {ids}; revoke by id")
    row = revoke(db, ids[0]) if ids else None
    if row is None:
        raise CliError(f"no key {target}")
    return f"revoked {row['id']} {row['prefix']}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.keys", description="Manage the service's API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    ensure = commands.add_parser("ensure-admin", help="store the admin key read from stdin unless it exists")
    ensure.add_argument("--name", required=True)
    ensure.set_defaults(run=_ensure_admin)
    make = commands.add_parser("create", help="create a key and print it (shown only this once)")
    owner = make.add_mutually_exclusive_group(required=True)
    owner.add_argument("--admin", action="store_true")
    owner.add_argument("--user-id", type=int)
    make.add_argument("--name", required=True)
    make.set_defaults(run=_create)
    commands.add_parser("list", help="list keys (never their secrets)").set_defaults(run=_list)
    revoke_cmd = commands.add_parser("revoke", help="revoke a key by id, prefix or the key itself")
    revoke_cmd.add_argument("key", metavar="ID_OR_PREFIX")
    revoke_cmd.set_defaults(run=_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from app.logs import configure_logging
    from app.migrate import migrate

    args = _parser().parse_args(argv)
    settings = get_settings()
    # Only warnings: stdout carries the result (a new key must be the only thing on it).
    configure_logging("WARNING")
    db = Database(settings.database_url, 1, 30.0, settings.db_connect_options)
    try:
        # Like the service: where the deployment migrates as the schema's owner, this role
        # may not (and need not) change the schema.
        if settings.migrate_on_start:
            migrate(db, settings)
        print(args.run(db, args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except DatabaseUnavailable as exc:
        print(f"error: database unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
