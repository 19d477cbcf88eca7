"""Small parts the load tools share: the client CPU they report (loadtests/cpu.py) and the
shell line that runs a command with the service's environment on a lab host (labssh)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import labssh
from loadtests.cpu import ChildrenCpu

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"


def test_children_cpu_counts_a_child_once_it_was_waited_for() -> None:
    children = ChildrenCpu()
    subprocess.run([sys.executable, "-c", BURN], check=True)
    used = children.seconds()
    assert 0.25 <= used < 5
    # A counter made afterwards starts from what was already counted.
    assert ChildrenCpu().seconds() == 0


def test_with_app_env_loads_the_service_environment_and_the_owners_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The line run by a real shell, with the two files written like the shortener role's."""
    (tmp_path / "shortener.env").write_text("SHORTENER_DATABASE_URL=postgresql://app@db/shortener\n")
    (tmp_path / "migrate.env").write_text("SHORTENER_MIGRATE_DATABASE_URL=postgresql://owner@db/shortener\n")
    monkeypatch.setattr(labssh, "APP_SRC", str(tmp_path))
    monkeypatch.setattr(labssh, "APP_ENV", str(tmp_path / "shortener.env"))
    monkeypatch.setattr(labssh, "APP_MIGRATE_ENV", str(tmp_path / "migrate.env"))
    # A child process sees only exported variables: `set -a` must cover both files.
    show = "pwd; sh -c 'echo ${SHORTENER_DATABASE_URL:-none} ${SHORTENER_MIGRATE_DATABASE_URL:-none}'"

    def run(line: str) -> list[str]:
        return subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True).stdout.split("\n")

    assert run(labssh.with_app_env(show))[:2] == [str(tmp_path), "postgresql://app@db/shortener none"]
    assert run(labssh.with_app_env(show, migrate=True))[1] == (
        "postgresql://app@db/shortener postgresql://owner@db/shortener"
    )
