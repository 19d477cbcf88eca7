"""Verify the hardening of the hosts: unit sandboxes and least privilege between components.

Runs in Molecule's verify step (testinfra over Molecule's Ansible inventory), or by hand against
any converged inventory:
    MOLECULE_INVENTORY_FILE=<inventory> python -m pytest molecule/default/tests/test_hardening.py

- every unit the roles install is running and `systemd-analyze security` rates its exposure
  at most 5.0 (at most 2.0 for the project's own units);
- Redis: the default user is off, the service's user reaches only its keys and commands, the
  exporter's only monitoring commands, and real traffic leaves no refusal in `ACL LOG`;
- PgBouncer's auth file holds SCRAM verifiers only; the PostgreSQL exporter logs in as a
  pg_monitor member that is not a superuser.
"""

from __future__ import annotations

import re
import shlex
import time
import uuid
from pathlib import Path

import pytest
import requests

from labkit.hosts import hosts_of

testinfra_hosts = hosts_of("all")

ROOT = Path(__file__).resolve().parents[3]
SECRETS = ROOT / "ansible" / ".secrets"

# The limits of issue 10: third-party daemons at most 5.0 ("MEDIUM" starts above), the
# project's own units at most 2.0.
LIMIT = 5.0
OWN_LIMIT = 2.0
INSTANCES = (8001, 8002, 8003)

# Units by the inventory group whose hosts run them.
UNITS_BY_GROUP = {
    "all": ["prometheus-node-exporter.service", "systemd-journal-gatewayd.service"],
    "lb": ["nginx.service", "prometheus-nginx-exporter.service", "mtail.service"],
    "db": [
        "postgresql@15-main.service",
        "pgbouncer.service",
        "prometheus-postgres-exporter.service",
        "pgbouncer-exporter.service",
    ],
    "cache": ["redis-server.service", "prometheus-redis-exporter.service"],
    "monitoring": [
        "prometheus.service",
        "prometheus-alertmanager.service",
        "prometheus-blackbox-exporter.service",
        "discord-sink.service",
    ],
}
# Socket-activated: systemd starts the service at the first connection (the log console's), so
# an idle service is not running, and its socket is what must be up. test_monitoring's console
# test makes it serve under its sandbox.
SOCKET_OF = {"systemd-journal-gatewayd.service": "systemd-journal-gatewayd.socket"}
OWN_UNITS = [*(f"shortener@{port}.service" for port in INSTANCES), "shortener-clickworker.service"]
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d)")


def groups_of(host) -> set[str]:
    return set(host.ansible.get_variables().get("group_names", []))


def units_of(host) -> list[tuple[str, float]]:
    groups = groups_of(host) | {"all"}
    units = [(unit, LIMIT) for group, names in UNITS_BY_GROUP.items() if group in groups for unit in names]
    if "app" in groups:
        units += [(unit, OWN_LIMIT) for unit in OWN_UNITS]
    # The discord sink exists only where an inventory turns it on (the lab does).
    return [(unit, limit) for unit, limit in units if unit != "discord-sink.service" or _exists(host, unit)]


def _exists(host, unit: str) -> bool:
    return host.run(f"systemctl cat {unit}").rc == 0


def exporter_metrics(host, port: int) -> str:
    """An exporter's /metrics from its own host: on loopback where Prometheus is that host, else on
    the host's address (exporters_listen_address; a cluster's db and cache hosts)."""
    address = host.ansible.get_variables()["ansible_host"]
    return host.check_output(f"curl -sf http://127.0.0.1:{port}/metrics || curl -sf http://{address}:{port}/metrics")


def exposure(host, unit: str) -> float:
    out = host.check_output(f"systemd-analyze security --no-pager {unit} 2>&1")
    match = EXPOSURE.search(out)
    assert match, out[-500:]
    return float(match.group(1))


def test_every_unit_runs_and_is_sandboxed(host):
    failures = []
    for unit, limit in units_of(host):
        running = SOCKET_OF.get(unit, unit)
        if not host.service(running).is_running:
            failures.append(f"{running} is not running")
            continue
        score = exposure(host, unit)
        if score > limit:
            failures.append(f"{unit}: exposure {score} > {limit}")
    assert not failures, failures


def test_every_drop_in_is_loaded(host):
    # A unit running with its drop-in in place but not loaded (no daemon-reload) would score
    # well only after the next reboot: the drop-in must be among the unit's loaded files.
    missing = []
    for unit, limit in units_of(host):
        if limit == OWN_LIMIT:
            continue
        template = re.sub(r"@[^.]+\.", "@.", unit)
        paths = host.check_output(f"systemctl show -p DropInPaths --value {unit}")
        if f"/etc/systemd/system/{template}.d/hardening.conf" not in paths.split():
            missing.append(unit)
    assert not missing, missing


def test_nginx_loads_only_the_modules_it_uses(host):
    # lua-nginx-redis pulls in nginx-extras, whose twenty modules Debian enables: the nginx role
    # loads the edge's two and nothing else (Perl, nchan, mail, stream... would sit in every
    # worker). Read from a running worker's memory map, not the configuration.
    if "lb" not in groups_of(host):
        pytest.skip("no Nginx on this host")
    variables = host.ansible.get_variables()
    wanted = set(variables.get("nginx_modules", []))
    if variables.get("nginx_edge_enabled", True):
        wanted |= {"ndk_http_module", "ngx_http_lua_module"}
    worker = host.check_output("pgrep -f -o 'nginx: worker process'")
    maps = host.check_output(f"cat /proc/{worker}/maps")
    loaded = set(re.findall(r"/usr/lib/nginx/modules/(\w+)\.so", maps))
    assert loaded == wanted, loaded


# --- Redis ACL users ----------------------------------------------------------------------------


def _secret(name: str) -> str:
    path = SECRETS / name
    if not path.exists():
        pytest.skip(f"{path} not found: this inventory keeps its secrets in its Vault")
    return path.read_text().strip()


def redis(host, args: str, user: str | None = None, password: str = "") -> str:
    auth = f"--user {shlex.quote(user)} " if user else ""
    env = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    # redis-cli prints a refused AUTH on stderr, the command's answer on stdout
    result = host.run(f"{env}redis-cli --no-auth-warning {auth}{args} 2>&1")
    return result.stdout.strip()


def app_redis(host) -> tuple[str, str]:
    """The service's own Redis user and password, from its environment file."""
    url = host.check_output("sed -n 's/^SHORTENER_REDIS_URL=\"\\(.*\\)\"$/\\1/p' /etc/shortener/shortener.env")
    match = re.match(r"redis://([^:@]+):([^@]+)@", url)
    assert match, "SHORTENER_REDIS_URL carries no user name"
    return match.group(1), requests.utils.unquote(match.group(2))


@pytest.fixture(scope="module")
def cache_host(host):
    if "cache" not in groups_of(host) or "app" not in groups_of(host):
        pytest.skip("the Redis checks run on a host that is both cache and app (the all-in-one host)")
    return host


def test_redis_default_user_is_off(cache_host):
    assert "NOAUTH" in redis(cache_host, "PING")
    # off: not even its right password would do, and it has none
    assert "WRONGPASS" in redis(cache_host, "PING", user="default", password="x")


def test_redis_service_user_reaches_only_its_keys_and_commands(cache_host):
    user, password = app_redis(cache_host)
    assert redis(cache_host, "PING", user, password) == "PONG"
    assert redis(cache_host, "SET shortener:url:acl-test x EX 5", user, password) == "OK"
    for refused in ("GET other:key", "SET other:key x", "CONFIG GET maxmemory", "FLUSHALL", "KEYS *", "ACL LIST"):
        assert "NOPERM" in redis(cache_host, refused, user, password), refused


def test_redis_exporter_user_only_monitors(cache_host):
    variables = cache_host.ansible.get_variables()
    user = variables.get("exporters_redis_user", "redis_exporter")
    password = _secret("redis_exporter_password")
    assert redis(cache_host, "INFO server", user, password).startswith("# Server")
    for refused in ("GET shortener:url:x", "SET shortener:x y", "CONFIG SET maxmemory 1mb", "FLUSHALL"):
        assert "NOPERM" in redis(cache_host, refused, user, password), refused
    metrics = exporter_metrics(cache_host, 9121)
    assert re.search(r"^redis_up 1$", metrics, re.M), "the Redis exporter cannot log in"


def test_real_traffic_needs_no_refused_command(cache_host):
    admin = _secret("redis_admin_password")
    redis(cache_host, "ACL LOG RESET", "admin", admin)
    address = cache_host.ansible.get_variables()["ansible_host"]
    base = f"http://{address}"
    headers = {}
    key_file = SECRETS / "shortener_admin_api_key"
    if key_file.exists():
        headers["Authorization"] = f"Bearer {key_file.read_text().strip()}"
    tag = uuid.uuid4().hex[:8]
    user = requests.post(
        f"{base}/users", json={"username": f"h{tag}", "email": f"h{tag}@example.com"}, headers=headers, timeout=5
    )
    assert user.status_code == 201, user.text
    url = requests.post(
        f"{base}/urls",
        json={"original_url": f"https://example.com/{tag}", "user_id": user.json()["id"]},
        headers=headers,
        timeout=5,
    )
    assert url.status_code == 201, url.text
    for _ in range(3):  # a miss that fills the cache, then hits; each click goes to the stream
        assert requests.get(f"{base}/{url.json()['short_code']}", allow_redirects=False, timeout=5).status_code == 302
    # the click worker moves the clicks into PostgreSQL; the exporter scrapes every 15 s
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = requests.get(
            f"{base}/events", params={"url_id": url.json()["id"], "event_type": "click"}, headers=headers, timeout=5
        )
        if events.status_code == 200 and len(events.json()) == 3:
            break
        time.sleep(1)
    assert len(events.json()) == 3, "the clicks did not reach PostgreSQL"
    time.sleep(16)
    log = redis(cache_host, "ACL LOG 20", "admin", admin)
    assert log == "", f"Redis refused commands of a component:\n{log}"


# --- PostgreSQL and PgBouncer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def db_host(host):
    if "db" not in groups_of(host):
        pytest.skip("not a db host")
    return host


def test_pgbouncer_keeps_scram_verifiers_only(db_host):
    text = db_host.check_output("cat /etc/pgbouncer/userlist.txt")
    entries = [line for line in text.splitlines() if line.startswith('"')]
    assert entries
    verifier = re.compile(r'^"[^"]+" "SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+"$')
    assert all(verifier.match(line) for line in entries), "a clear-text password in PgBouncer's auth file"
    ini = db_host.check_output("cat /etc/pgbouncer/pgbouncer.ini /etc/pgbouncer/pgbouncer-pools.ini")
    assert re.search(r"^auth_type = scram-sha-256$", ini, re.M)


def test_pgbouncer_exporter_logs_in_with_scram(db_host):
    metrics = exporter_metrics(db_host, 9127)
    assert re.search(r"^pgbouncer_up 1(\.0)?$", metrics, re.M), metrics[:300]


def test_postgres_exporter_is_pg_monitor_and_not_superuser(db_host):
    query = (
        "SELECT current_user, rolsuper, pg_has_role('pg_monitor', 'MEMBER') FROM pg_roles WHERE rolname = current_user"
    )
    psql = "runuser -u prometheus -- psql -h /run/postgresql -d postgres -XAtc"
    row = db_host.check_output(f"{psql} {shlex.quote(query)}")
    assert row == "prometheus|f|t"
    metrics = exporter_metrics(db_host, 9187)
    assert re.search(r"^pg_up 1$", metrics, re.M)


def _env_value(host, name: str, path: str = "/etc/shortener/shortener.env") -> str:
    return host.check_output(f"sed -n 's/^{name}=\"\\(.*\\)\"$/\\1/p' {path}")


def test_service_role_owns_nothing_and_cannot_change_the_schema(host):
    groups = groups_of(host)
    if not {"app", "db"} <= groups:
        pytest.skip("checked on a host that is both app and db (the all-in-one host)")
    owned = host.check_output(
        "runuser -u postgres -- psql -d shortener -XAtc "
        + shlex.quote(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
            "WHERE r.rolname = 'shortener' AND c.relnamespace = 'public'::regnamespace"
        )
    )
    assert owned == "0"
    # the service's own URL, through PgBouncer: rows yes, schema no
    url = shlex.quote(_env_value(host, "SHORTENER_DATABASE_URL"))
    assert host.check_output(f"psql {url} -XAtc 'SELECT count(*) >= 0 FROM urls'") == "t"
    refused = host.run(f"psql {url} -XAtc 'CREATE TABLE harden_probe (id int)'")
    assert refused.rc != 0 and "permission denied" in refused.stderr
    refused = host.run(f"psql {url} -XAtc 'DROP TABLE schema_migrations'")
    assert refused.rc != 0 and "must be owner" in refused.stderr
    # the instances neither migrate nor see the owner's password
    assert _env_value(host, "SHORTENER_MIGRATE_ON_START") == "false"
    assert "MIGRATE_DATABASE_URL" not in host.check_output("cat /etc/shortener/shortener.env")
    migrate_env = host.file("/etc/shortener/migrate.env")
    assert migrate_env.user == "root" and migrate_env.mode == 0o600
