"""Verify what two alerts read from their exporters, cheaply (the pages themselves take minutes
and are measured by the chaos suite, docs/chaos.md): PostgresqlLockBlocking's lock-wait query
of the PostgreSQL exporter, and RedisDown's redis_up when Redis hangs.

Molecule's verify step runs it with the scenario's inventory (MOLECULE_INVENTORY_FILE); the
exporters are read on their own hosts.
"""

from __future__ import annotations

import os
import re
import shlex
import time
import uuid

import testinfra

from labkit.hosts import hosts_of

if "MOLECULE_INVENTORY_FILE" in os.environ:
    testinfra_hosts = hosts_of("monitoring")


def hosts_in(host, group: str) -> list:
    """The testinfra hosts of an inventory group, reached through Ansible like `host`."""
    inventory = host.backend.ansible_inventory
    return [testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory) for name in hosts_of(group)]


def exporter_metrics(member, unit_default: str) -> str:
    """An exporter's /metrics read on its own host, at the address its /etc/default file names."""
    args = member.check_output(f"grep -o 'web.listen-address=[^ \"]*' {unit_default}")
    return member.check_output(f"curl -sf http://{args.split('=', 1)[1]}/metrics")


def test_a_lock_others_wait_for_is_exported_with_its_age(host):
    """PostgresqlLockBlocking's metric (the PostgreSQL exporter's query of our own): a session
    holding ACCESS EXCLUSIVE on urls while another waits for it shows up with its age. The
    chaos suite's 12-urls-lock measures the page itself; this costs about 10 s."""
    db = hosts_in(host, "db")[0]
    tag = f"verify-lock-{uuid.uuid4().hex[:6]}"
    psql = "runuser -u postgres -- psql -d shortener -Xq"
    hold = "BEGIN; LOCK TABLE urls IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(30); COMMIT;"
    db.run(f"PGAPPNAME={tag} nohup {psql} -c {shlex.quote(hold)} >/dev/null 2>&1 &")
    time.sleep(1)
    db.run(f"PGAPPNAME={tag} nohup {psql} -c 'SELECT count(*) FROM urls' >/dev/null 2>&1 &")
    seen: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = exporter_metrics(db, "/etc/default/prometheus-postgres-exporter")
            seen = {
                m.group(1): float(m.group(2))
                for m in re.finditer(r"^pg_lock_waits_(\w+)(?:\{[^}]*\})? (\S+)$", text, re.M)
            }
            if seen.get("waiting_sessions", 0) >= 1 and seen.get("oldest_blocker_seconds", 0) >= 3:
                break
            time.sleep(1)
    finally:
        stop = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{tag}'"
        db.run(f"{psql} -c {shlex.quote(stop)}")
    assert seen.get("waiting_sessions", 0) >= 1, seen
    assert seen.get("oldest_blocker_seconds", 0) >= 3, seen
    after = exporter_metrics(db, "/etc/default/prometheus-postgres-exporter")
    assert re.search(r"^pg_lock_waits_oldest_blocker_seconds(\{[^}]*\})? 0$", after, re.M), after


def test_a_hung_redis_is_reported_down_not_missing(host):
    """A Redis that accepts but never answers (SIGSTOP): the exporter gives up before
    Prometheus' scrape timeout and says redis_up 0, so RedisDown can fire (with the exporter's
    default 15 s the whole scrape timed out and redis_up vanished: chaos 06-redis-hang). ~5 s."""
    cache = hosts_in(host, "cache")[0]
    cache.check_output("systemctl kill --kill-whom=main --signal=STOP redis-server.service")
    try:
        started = time.monotonic()
        text = exporter_metrics(cache, "/etc/default/prometheus-redis-exporter")
        took = time.monotonic() - started
    finally:
        cache.check_output("systemctl kill --kill-whom=main --signal=CONT redis-server.service")
    assert re.search(r"^redis_up 0$", text, re.M), text[-2000:]
    assert took < 10, f"the exporter took {took:.1f} s: Prometheus' scrape would have timed out"
