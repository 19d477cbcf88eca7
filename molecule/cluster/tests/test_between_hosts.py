"""Verify what only a cluster has: the links between hosts and who may use them.

The modules linked from the default scenario check each part where it runs (the edge on the lb
host, the backups, the keys profile, the sandboxes); this one checks the paths between hosts:
- PgBouncer on the db host takes SCRAM from the app hosts (the service's password works, a
  wrong one is refused, and the password never is in PgBouncer's files);
- Redis on the cache host answers the lb host only as the edge's own user, and the lb host
  holds no other Redis credential;
- the pgBackRest repository is on the backup host, not on the database's;
- the journal gateways that the lb host's console reads over TCP answer only the console's
  Nginx workers: another local user of the gateway's host, or of the lb host, is refused, and
  so is another lab host; the console still shows the host's logs.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import pytest
import requests
from conftest import redis_on

from labkit.hosts import address_of, hosts_of
from labkit.hosts import testinfra_host as host_named  # not "test...": pytest would collect it

testinfra_hosts = hosts_of("lb")

ROOT = Path(__file__).resolve().parents[3]
SECRETS = ROOT / "ansible" / ".secrets"
LAB_CA = SECRETS / "lab_ca" / "ca.crt"
GATEWAY_PORT = 19531
CONSOLE_PORT = 8443
AS_NOBODY = "setpriv --reuid=nobody --regid=nogroup --clear-groups"
AS_NGINX = "setpriv --reuid=www-data --regid=www-data --init-groups"
VENV_PYTHON = "/opt/shortener/venv/bin/python"


def secret(name: str) -> str:
    path = SECRETS / name
    if not path.exists():
        pytest.skip(f"{path} not found: this inventory keeps its secrets in its Vault")
    return path.read_text().strip()


# --- PostgreSQL through PgBouncer, from the app hosts --------------------------------------------


def _connect(app, password: str) -> tuple[int, str]:
    db = address_of(hosts_of("db")[0])
    probe = (
        f"import psycopg2; psycopg2.connect(host={db!r}, port=6432, dbname='shortener', user='shortener', "
        "connect_timeout=5, sslmode='disable').close()"
    )
    result = app.run(f"PGPASSWORD={shlex.quote(password)} {VENV_PYTHON} -c {shlex.quote(probe)}")
    return result.rc, result.stderr


def test_pgbouncer_takes_scram_from_every_app_host():
    password = secret("db_password")
    db = host_named(hosts_of("db")[0])
    for name in hosts_of("app"):
        app = host_named(name)
        assert _connect(app, password) == (0, ""), name
        rc, error = _connect(app, password + "x")
        # PgBouncer names the SCRAM (SASL) exchange that failed
        assert rc != 0 and "SASL authentication failed" in error, (name, error)
    # SCRAM on PgBouncer's side too: only verifiers in its files, never the password itself
    files = db.check_output("cat /etc/pgbouncer/userlist.txt /etc/pgbouncer/pgbouncer.ini /etc/pgbouncer/*.ini")
    assert "auth_type = scram-sha-256" in files and password not in files


# --- Redis, from the lb host: the edge's user only -----------------------------------------------


def test_the_cache_answers_the_lb_host_as_the_edge_user_only(host):
    cache = address_of(hosts_of("cache")[0])
    edge = secret("redis_edge_password")
    assert redis_on(host, cache, "shortener_edge", edge, "PING") == "PONG"
    assert "NOPERM" in redis_on(host, cache, "shortener_edge", edge, "SET shortener:url:x y")
    # The lb host holds the edge's password and no other Redis credential.
    others = [secret(name) for name in ("redis_password", "redis_exporter_password", "redis_admin_password")]
    found = host.run("grep -rlF -f /dev/stdin /etc /opt /usr/local 2>/dev/null <<'EOF'\n" + "\n".join(others) + "\nEOF")
    assert found.stdout.strip() == "", f"another Redis user's password on the lb host: {found.stdout}"
    assert host.run(f"grep -rlF {shlex.quote(edge)} /etc/nginx").stdout.strip() != ""


def test_the_cache_hosts_firewall_admits_the_lb_host_to_redis_only():
    """Issue 14's cluster point: the lb hosts reach the cache host for Redis, and otherwise only
    for its journal gateway (their log console) and, when an lb host is a monitoring host, for
    the exporters its Prometheus scrapes."""
    cache = host_named(hosts_of("cache")[0])
    rules = cache.check_output("nft list chain inet common_filter input")
    admitted: dict[str, set[int]] = {}
    for sources, port in re.findall(r"ip saddr (\{[^}]*\}|\S+) tcp dport (\d+) accept", rules):
        for source in sources.strip("{} ").split(","):
            admitted.setdefault(source.strip(), set()).add(int(port))
    for name in hosts_of("lb"):
        allowed = {6379, GATEWAY_PORT} | ({9100, 9121} if name in hosts_of("monitoring") else set())
        assert admitted.get(address_of(name)) == allowed, (name, admitted)
    assert address_of(hosts_of("db")[0]) not in admitted, admitted


# --- Backups: the repository on its own host -----------------------------------------------------


def test_the_backup_repository_is_on_the_backup_host_only():
    db_name, repo_name = hosts_of("db")[0], hosts_of("backup")[0]
    assert repo_name != db_name
    db, repo = host_named(db_name), host_named(repo_name)
    info = json.loads(repo.check_output("runuser -u pgbackrest -- pgbackrest --output=json info"))
    assert [stanza["status"]["code"] for stanza in info] == [0], info
    assert any(backup["type"] == "full" for backup in info[0]["backup"])
    assert f"repo1-host={address_of(repo_name)}" in db.check_output("cat /etc/pgbackrest.conf")
    # On the database host: no repository (nothing under pgBackRest's repository path).
    assert db.run("find /var/lib/pgbackrest -mindepth 1 -print -quit 2>/dev/null").stdout.strip() == ""
    # WAL archiving reaches the other host: check forces a segment switch and waits for it.
    db.check_output("runuser -u postgres -- pgbackrest --stanza=shortener check")


# --- The journal gateways: the console only ------------------------------------------------------


def _gateway(host, address: str, as_user: str = "") -> str:
    """An HTTP GET of a gateway's /browse from `host`: the status, or the error's name."""
    probe = (
        "import urllib.request, sys\n"
        "try:\n"
        f"    print(urllib.request.urlopen('http://{address}:{GATEWAY_PORT}/browse', timeout=5).status)\n"
        "except Exception as error:\n"
        "    print(type(getattr(error, 'reason', error)).__name__)\n"
    )
    return host.check_output(f"cd / && {as_user} python3 -c {shlex.quote(probe)}")


def _tcp_gateways() -> list[str]:
    lb = set(hosts_of("lb"))
    return [name for name in hosts_of("all") if name not in lb or len(lb) > 1]


def test_a_gateway_on_tcp_answers_the_console_only(host):
    gateways = _tcp_gateways()
    assert gateways, "no host's gateway is on TCP: nothing for this test"
    for name in gateways:
        address = address_of(name)
        gateway_host = host_named(name)
        assert gateway_host.socket(f"tcp://{address}:{GATEWAY_PORT}").is_listening, name
        # The console's Nginx workers are served...
        assert _gateway(host, address, AS_NGINX) == "200", name
        # ...no other user of the lb host, and no user of the gateway's own host, root included.
        assert _gateway(host, address, AS_NOBODY) == "ConnectionRefusedError", name
        assert _gateway(host, address) == "ConnectionRefusedError", name
        assert _gateway(gateway_host, address, AS_NOBODY) == "ConnectionRefusedError", name
        assert _gateway(gateway_host, address) == "ConnectionRefusedError", name
        # Another lab host: its own output rule resets the connection.
        other = host_named(next(n for n in gateways if n != name))
        assert _gateway(other, address) == "ConnectionRefusedError", name
    # Without that rule (root there may drop it), the gateway's input rule still drops it.
    target, other = gateways[0], host_named(gateways[-1])
    other.check_output("nft flush chain inet common_filter output")
    try:
        assert _gateway(other, address_of(target)) == "TimeoutError", target
    finally:
        other.check_output("nft -f /etc/nftables.conf")


def test_the_console_shows_each_tcp_gateway_host_logs(host):
    password = secret("journal_gateway_password")
    lb = address_of(host.backend.get_hostname())
    since = int(time.time() * 1_000_000) - 30 * 60 * 1_000_000
    for name in _tcp_gateways():
        answer = requests.get(
            f"https://{lb}:{CONSOLE_PORT}/logs/{name}/entries",
            params={"_HOSTNAME": name},
            headers={"Range": f"entries=t={since:x}", "Accept": "application/json"},
            auth=("operator", password),
            verify=str(LAB_CA) if LAB_CA.exists() else True,
            timeout=20,
        )
        assert answer.status_code == 200, (name, answer.status_code, answer.text[:200])
        entries = [json.loads(line) for line in answer.text.splitlines() if line.startswith("{")]
        assert entries and {entry["_HOSTNAME"] for entry in entries} == {name}, name
