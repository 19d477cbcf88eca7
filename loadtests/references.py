"""The bench's two references on the lab host, set up over SSH for one run and removed after it:
Nginx answering a fixed 302 itself (the ceiling) and a bare WSGI app doing one Redis GET under
the service's Gunicorn settings (the floor)."""

from __future__ import annotations

import re
import time

from loadtests import labssh

BENCH_CONF = "/etc/nginx/conf.d/zz-shortener-bench.conf"
BENCH_DIR = "/opt/shortener-bench"
BARE_PORTS = (8101, 8102, 8103)
STATIC_HOST = "bench-static"
BARE_HOST = "bench-wsgi"
PYTHON_HOST = "bench-python"

BARE_APP = '''"""The bench's floor: one Redis round trip and a 302, nothing else."""
import os

import redis

_r = redis.Redis.from_url(
    os.environ["SHORTENER_REDIS_URL"], socket_timeout=0.25, socket_connect_timeout=0.25,
    decode_responses=True, health_check_interval=0,
)
_KEY = os.environ.get("BENCH_KEY", "shortener:url:bench")
_HEADERS = [("Location", "https://example.com/"), ("Content-Length", "0"),
            ("Cache-Control", "private, no-store")]


def app(environ, start_response):
    _r.get(_KEY)
    start_response("302 Found", list(_HEADERS))
    return [b""]
'''

# The service's Gunicorn settings that matter for throughput (app/gunicorn_conf.py).
BARE_GUNICORN_CONF = """import os
bind = os.environ["BENCH_BIND"]
workers = int(os.environ.get("SHORTENER_WORKERS", "2"))
threads = int(os.environ.get("SHORTENER_THREADS", "16"))
worker_class = "gthread"
keepalive = 75
accesslog = None
errorlog = "-"
"""

# The variables the http-level access log writes and only the service's server sets: a server
# that leaves them unset makes Nginx warn in its error log twice per request ("using
# uninitialized variable"), two more journal lines per request that the service's own requests
# do not pay (seen in loadtests/logcost.py's runs: every reference request cost them).
LOG_VARIABLES = """    set $shortener_edge "";
    set $shortener_edge_breaker "";
"""

# A name-based server on the service's port 80 that proxies as the service's own location does
# (proxy settings, upstream keepalive); it inherits the http-level access log.
PROXY_SERVER = """server {{
    listen 80;
    server_name {name};
{log_variables}    add_header X-Request-ID $request_id always;
    location / {{
        proxy_pass http://{upstream};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-ID $request_id;
        proxy_redirect off;
        proxy_next_upstream {next_upstream};
    }}
}}
"""

# Three servers: static (Nginx's own 302), bare (the bare WSGI app's upstream) and python (the
# service's own upstream without the edge: the Python redirect path).
NGINX_CONF = """# Written by loadtests/bench.py for one benchmark run; removed when it ends.
upstream shortener_bench_wsgi {{
    least_conn;
{servers}
    keepalive 64;
    keepalive_requests 10000;
    keepalive_timeout 60s;
}}
server {{
    listen 80;
    server_name {static};
{log_variables}    location / {{
        return 302 https://example.com/;
    }}
}}
{bare_server}{python_server}"""


# redis-cli 7.0 sends an empty user name for redis://:PASSWORD@ URLs, which Redis refuses: take
# the URL (redis://USER:PASSWORD@HOST:PORT/DB, the service's ACL user) apart in the shell and pass
# the password through REDISCLI_AUTH (not on the command line).
REDIS_ENV = (
    "u=${SHORTENER_REDIS_URL#*://}; hp=${u##*@}; hp=${hp%%/*}; a=${u%@*}; "
    "export REDISCLI_AUTH=${a#*:}; U=${a%%:*}; H=${hp%:*}; P=${hp##*:}"
)
REDIS_CLI = REDIS_ENV + '; redis-cli --user "$U" -h "$H" -p "$P"'


def redis_cli(host: str, args: str) -> str:
    return labssh.ssh(host, labssh.with_app_env(f"{REDIS_CLI} {args}")).strip()


def setup_references(host: str) -> None:
    env = labssh.ssh(host, f"cat {labssh.APP_ENV}")
    settings = {k: v.strip("\"'") for k, v in re.findall(r"^(SHORTENER_[A-Z_]+)=(.*)$", env, re.M)}
    workers, threads = settings.get("SHORTENER_WORKERS", "2"), settings.get("SHORTENER_THREADS", "16")
    print(f"references: {len(BARE_PORTS)} bare Gunicorn instances x {workers} workers x {threads} threads", flush=True)
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=3s;" for p in BARE_PORTS)
    conf = NGINX_CONF.format(
        servers=servers,
        static=STATIC_HOST,
        log_variables=LOG_VARIABLES,
        bare_server=PROXY_SERVER.format(
            name=BARE_HOST,
            upstream="shortener_bench_wsgi",
            next_upstream="error timeout http_502 http_503",
            log_variables=LOG_VARIABLES,
        ),
        python_server=PROXY_SERVER.format(
            name=PYTHON_HOST, upstream="shortener", next_upstream="error timeout", log_variables=LOG_VARIABLES
        ),
    )
    script = [
        f"mkdir -p {BENCH_DIR}",
        f"cat > {BENCH_DIR}/benchwsgi.py <<'PYEOF'\n{BARE_APP}PYEOF",
        f"cat > {BENCH_DIR}/gunicorn_conf.py <<'PYEOF'\n{BARE_GUNICORN_CONF}PYEOF",
        f"cat > {BENCH_CONF} <<'NGEOF'\n{conf}NGEOF",
    ]
    for port in BARE_PORTS:
        script.append(
            f"systemctl stop shortener-bench-{port} 2>/dev/null || true; systemctl reset-failed "
            f"shortener-bench-{port} 2>/dev/null || true; "
            f"systemd-run --quiet --unit=shortener-bench-{port} --uid=shortener --gid=shortener "
            f"--property=EnvironmentFile={labssh.APP_ENV} --setenv=BENCH_BIND=127.0.0.1:{port} "
            f"--setenv=BENCH_KEY=shortener:url:bench --working-directory={BENCH_DIR} --property=LimitNOFILE=65536 "
            f"{labssh.APP_VENV}/bin/gunicorn -c {BENCH_DIR}/gunicorn_conf.py benchwsgi:app"
        )
    script.append("nginx -t -q && systemctl reload nginx")
    labssh.ssh(host, "set -e\n" + "\n".join(script))
    redis_cli(host, "SET shortener:url:bench 'bench reference value'")
    for _ in range(60):
        out = labssh.ssh(
            host,
            " ; ".join(f"curl -s -o /dev/null -w '%{{http_code}} ' http://127.0.0.1:{p}/x" for p in BARE_PORTS),
            check=False,
        )
        if out.split() == ["302"] * len(BARE_PORTS):
            break
        time.sleep(1)
    else:
        raise RuntimeError(f"the bare WSGI reference did not come up: {out}")


def teardown_references(host: str) -> None:
    script = [f"rm -f {BENCH_CONF}", "nginx -t -q && systemctl reload nginx"]
    script += [f"systemctl stop shortener-bench-{p} 2>/dev/null" for p in BARE_PORTS]
    script.append(f"rm -rf {BENCH_DIR}")
    labssh.ssh(host, "\n".join(script), check=False)
    redis_cli(host, "DEL shortener:url:bench")
