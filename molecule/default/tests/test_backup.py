"""Verify the backups (pgbackrest role, docs/backups.md): a backup and a restore of the deployed host.

On the database host (testinfra over the Molecule inventory, or any converged inventory):
- the backup and metrics units are sandboxed, WAL archiving reaches the repository, node
  exporter serves the backup metrics;
- a differential backup by its systemd unit (on the repository's host), links made before and
  after it, then a restore of the latest backup and WAL into a scratch data directory served by a
  second postmaster on a spare port of the same host: row counts and an md5 of users, urls and
  events up to the target time equal the live database's (ansible/playbooks/files/
  restore-checksums.sql, the restore drill's own query). `make restore-drill` does the same onto
  a fresh host; this is the cheap version CI runs on every change.
"""

from __future__ import annotations

import os
import re
import shlex
import time
import uuid
from pathlib import Path

import pytest
import requests
import testinfra.utils.ansible_runner

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
testinfra_hosts = RUNNER.get_hosts("db")

ROOT = Path(__file__).resolve().parents[3]
CHECKSUMS = (ROOT / "ansible" / "playbooks" / "files" / "restore-checksums.sql").read_text()
STANZA = "shortener"
SCRATCH = "/var/tmp/shortener-restore-test"
SCRATCH_PORT = 5499
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d)")


def repo_host_name() -> str:
    return (RUNNER.get_hosts("backup") or RUNNER.get_hosts("db"))[0]


def base_url() -> str:
    return f"http://{RUNNER.get_variables(RUNNER.get_hosts('lb')[0])['ansible_host']}"


def as_postgres(host, command: str, stdin: str | None = None) -> str:
    """A command as the postgres user; stdin through a here-document (psql variables work there)."""
    if stdin is None:
        return host.check_output(f"cd / && runuser -u postgres -- {command}")
    marker = f"EOF_{uuid.uuid4().hex}"
    return host.check_output(f"cd / && runuser -u postgres -- {command} <<'{marker}'\n{stdin}\n{marker}")


def checksums(host, target: str, extra: str = "") -> list[str]:
    psql = f"psql -X -At -v ON_ERROR_STOP=1 {extra} -d shortener -v target={shlex.quote(target)}"
    return as_postgres(host, psql, CHECKSUMS).splitlines()


def write_as_postgres(host, path: str, text: str) -> None:
    as_postgres(host, f"tee {path}", text)


def metric(metrics: str, name: str, labels: str) -> float | None:
    match = re.search(rf"^{name}{{{re.escape(labels)}}} (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else None


def test_backup_units_are_sandboxed(host):
    units = ["pgbackrest-metrics.service"]
    if repo_host_name() == host.backend.host:
        units += ["pgbackrest-backup@full.service", "pgbackrest-backup@diff.service"]
    for unit in units:
        out = host.check_output(f"systemd-analyze security --no-pager {unit} 2>&1")
        match = EXPOSURE.search(out)
        assert match, out[-500:]
        assert float(match.group(1)) <= 5.0, f"{unit}: exposure {match.group(1)}"
    assert host.service("pgbackrest-metrics.timer").is_enabled


def test_wal_archiving_reaches_the_repository(host):
    # pgbackrest check: a WAL switch, archived through archive_command, found in the repository
    host.check_output(f"runuser -u postgres -- pgbackrest --stanza={STANZA} check")
    assert as_postgres(host, "psql -X -At -c 'SHOW archive_mode'") == "on"
    assert as_postgres(host, "psql -X -At -c 'SHOW archive_timeout'") == "1min"


def test_node_exporter_serves_the_backup_metrics(host):
    host.check_output("systemctl start pgbackrest-metrics.service")
    # node exporter listens on loopback when Prometheus is on the same host, else on the host's address
    address = RUNNER.get_variables(host.backend.host)["ansible_host"]
    metrics = host.check_output(f"curl -sf http://127.0.0.1:9100/metrics || curl -sf http://{address}:9100/metrics")
    labels = f'stanza="{STANZA}"'
    assert metric(metrics, "pgbackrest_up", labels) == 1, "pgbackrest info failed"
    assert metric(metrics, "pgbackrest_archive_up", labels) == 1, "the archiver query failed"
    full = metric(metrics, "pgbackrest_backup_last_success_timestamp_seconds", f'{labels},type="full"')
    assert full and full > 0, "no full backup in the repository"
    assert metric(metrics, "pgbackrest_archive_failure_total", labels) is not None


def _make_link(tag: str, headers: dict[str, str]) -> None:
    url = requests.post(
        f"{base_url()}/urls", json={"original_url": f"https://example.com/backup/{tag}"}, headers=headers, timeout=10
    )
    assert url.status_code == 201, url.text


@pytest.fixture
def scratch(host):
    """A scratch data directory for the restored copy; its postmaster stopped and all of it removed after."""
    host.run(f"rm -rf {SCRATCH}")
    yield SCRATCH
    host.run(f"runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D {SCRATCH} -m immediate stop")
    host.run(f"rm -rf {SCRATCH}")


def test_backup_then_restore_gives_the_same_data(host, scratch, admin_headers):
    started = time.monotonic()
    _make_link(f"before-{uuid.uuid4().hex[:8]}", admin_headers)
    # a differential backup, by the unit the timer starts, on the repository's host
    repo = host.get_host(f"ansible://{repo_host_name()}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])
    repo.check_output("systemctl start pgbackrest-backup@diff.service")
    assert repo.service("pgbackrest-backup@diff.service").systemd_properties["Result"] == "success"
    # a link after the backup: the restore must replay it from the archived WAL
    _make_link(f"after-{uuid.uuid4().hex[:8]}", admin_headers)
    target = as_postgres(host, "psql -X -At -c \"SELECT now() AT TIME ZONE 'utc'\"")
    host.check_output(f"runuser -u postgres -- pgbackrest --stanza={STANZA} check")  # archives the current segment
    source = checksums(host, target)
    backed_up = time.monotonic()

    # The latest backup and all the WAL, into the scratch directory; archive_mode off so the copy
    # never pushes into the live stanza's archive.
    host.check_output(f"install -d -o postgres -g postgres -m 0700 {scratch}")
    host.check_output(
        f"runuser -u postgres -- pgbackrest --stanza={STANZA} --pg1-path={scratch} --archive-mode=off restore"
    )
    conf = "\n".join(
        [
            f"port = {SCRATCH_PORT}",
            "listen_addresses = ''",
            f"unix_socket_directories = '{scratch}'",
            # max_connections, max_worker_processes... keep their defaults: a server in recovery
            # refuses to start below the values the source ran with.
            "archive_mode = off",
            f"hba_file = '{scratch}/pg_hba.conf'",
            f"ident_file = '{scratch}/pg_ident.conf'",
        ]
    )
    write_as_postgres(host, f"{scratch}/postgresql.conf", conf)
    write_as_postgres(host, f"{scratch}/pg_hba.conf", "local all all peer")
    write_as_postgres(host, f"{scratch}/pg_ident.conf", "")
    as_postgres(host, f"/usr/lib/postgresql/15/bin/pg_ctl -D {scratch} -l {scratch}/server.log -w -t 300 start")
    deadline = time.monotonic() + 300
    promoted = ""
    while time.monotonic() < deadline:
        promoted = as_postgres(host, f"psql -X -At -h {scratch} -p {SCRATCH_PORT} -c 'SELECT NOT pg_is_in_recovery()'")
        if promoted == "t":
            break
        time.sleep(0.5)
    assert promoted == "t", host.check_output(f"tail -20 {scratch}/server.log")
    restored = checksums(host, target, extra=f"-h {scratch} -p {SCRATCH_PORT}")
    assert restored == source
    assert [line.split("|")[0] for line in restored] == ["users", "urls", "events"]
    assert int(restored[1].split("|")[1]) >= 2
    print(
        f"backup+archive {backed_up - started:.1f} s, restore+replay {time.monotonic() - backed_up:.1f} s; "
        f"equal up to {target}: {restored}"
    )
