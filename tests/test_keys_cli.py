"""`python -m app.keys`: the command line the deployment uses, run as a real subprocess."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from app import keys
from devstack import DevStack

pytestmark = pytest.mark.usefixtures("clean")


def run_cli(stack: DevStack, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env(), "SHORTENER_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "app.keys", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_generated_keys_match_the_fixed_format() -> None:
    made = {keys.generate() for _ in range(50)}
    assert len(made) == 50
    assert all(keys.KEY_PATTERN.fullmatch(k) for k in made)
    assert not keys.is_well_formed("shk_" + "a" * 39)
    assert not keys.is_well_formed("shk_" + "a" * 39 + "-")
    assert not keys.is_well_formed("shk_" + "a" * 40 + "\n")


def test_ensure_admin_creates_then_is_unchanged(clean: DevStack, sql: Callable[..., list[tuple[Any, ...]]]) -> None:
    key = keys.generate()
    first = run_cli(clean, "ensure-admin", "--name", "deploy", stdin=key + "\n")
    assert (first.returncode, first.stdout.strip()) == (0, "created"), first.stderr
    again = run_cli(clean, "ensure-admin", "--name", "deploy", stdin=key)
    assert (again.returncode, again.stdout.strip()) == (0, "unchanged"), again.stderr
    rows = sql("SELECT is_admin, user_id, name, prefix, key_hash FROM api_keys")
    assert rows == [(True, None, "deploy", key[:12], hashlib.sha256(key.encode()).hexdigest())]
    # The secret itself is nowhere in the table.
    assert key not in repr(sql("SELECT * FROM api_keys"))


def test_ensure_admin_rejects_a_malformed_key_without_echoing_it(clean: DevStack) -> None:
    bad = "shk_" + "x" * 39 + "!"
    result = run_cli(clean, "ensure-admin", "--name", "deploy", stdin=bad)
    assert result.returncode == 2
    assert "does not match" in result.stderr
    assert bad not in result.stderr + result.stdout


def test_ensure_admin_refuses_a_revoked_key(clean: DevStack) -> None:
    key = keys.generate()
    assert run_cli(clean, "ensure-admin", "--name", "deploy", stdin=key).returncode == 0
    revoked = run_cli(clean, "revoke", key[:12])
    assert revoked.returncode == 0, revoked.stderr
    again = run_cli(clean, "ensure-admin", "--name", "deploy", stdin=key)
    assert again.returncode == 1
    assert "revoked" in again.stderr


def test_create_list_revoke(clean: DevStack, sql: Callable[..., list[tuple[Any, ...]]]) -> None:
    sql("INSERT INTO users (username, email) VALUES ('ann', 'ann@example.com')")
    admin = run_cli(clean, "create", "--admin", "--name", "ops")
    assert admin.returncode == 0, admin.stderr
    admin_key = admin.stdout.strip()
    assert admin.stdout == admin_key + "\n" and keys.is_well_formed(admin_key)
    user = run_cli(clean, "create", "--user-id", "1", "--name", "ann's laptop")
    assert user.returncode == 0, user.stderr
    user_key = user.stdout.strip()

    listing = run_cli(clean, "list")
    assert listing.returncode == 0
    assert admin_key[:12] in listing.stdout and user_key[:12] in listing.stdout
    assert admin_key not in listing.stdout and user_key not in listing.stdout
    assert "user:1" in listing.stdout

    assert run_cli(clean, "revoke", "2").returncode == 0
    assert run_cli(clean, "revoke", admin_key).returncode == 0
    assert sql("SELECT id FROM api_keys WHERE revoked_at IS NOT NULL ORDER BY id") == [(1,), (2,)]

    missing = run_cli(clean, "revoke", "shk_nothere0")
    assert missing.returncode == 1 and "no key" in missing.stderr
    nobody = run_cli(clean, "create", "--user-id", "99", "--name", "x")
    assert nobody.returncode == 1 and "does not exist" in nobody.stderr
    both = run_cli(clean, "create", "--admin", "--user-id", "1", "--name", "x")
    assert both.returncode == 2
