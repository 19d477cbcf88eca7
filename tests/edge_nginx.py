"""A real Nginx carrying the Lua edge, in front of a test Gunicorn, for tests/test_edge.py.

It runs Debian's nginx with libnginx-mod-http-lua and lua-nginx-redis (the Makefile's
APT_PACKAGES) as an unprivileged foreground process, with the SAME two Lua files the nginx
role installs: ansible/roles/nginx/files/shortener_edge.lua and app/redirect_hit.lua. The
configuration around them is the role's short-link location cut down to what the edge meets
(the request id, the click id handed on, the JSON access line with the edge's fields); the
whole template is checked by Molecule (molecule/default/tests/test_edge_redirect.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.http_helpers import REPO_ROOT, free_port, port_open

NGINX = Path("/usr/sbin/nginx")
MODULES = Path("/usr/lib/nginx/modules")
EDGE_LUA = REPO_ROOT / "ansible/roles/nginx/files/shortener_edge.lua"
HIT_SCRIPT = REPO_ROOT / "app/redirect_hit.lua"
REDIS_CLIENT = Path("/usr/share/lua/5.1/nginx/redis.lua")

# The edge settings the nginx role writes from its nginx_edge_* defaults (edge_settings.lua.j2),
# with a shorter Redis timeout, breaker pause and pool than the role's, so the tests are quick.
DEFAULTS: dict[str, Any] = {
    "key_prefix": "shortener:url:",
    "stream": "shortener:clicks",
    "connect_timeout_ms": 50,
    "timeout_ms": 100,
    "pool_size": 32,
    "pool_idle_ms": 60000,
    "breaker_threshold": 3,
    "breaker_reset": 2,
    "header_bytes": 2048,
    "reserved": ["urls", "users", "events", "keys", "api-keys", "health", "metrics"],
    "redis_user": "",
    "redis_password": "",
}


def missing() -> list[str]:
    """What this machine lacks to run the edge (empty: all there)."""
    needs = [NGINX, MODULES / "ngx_http_lua_module.so", MODULES / "ndk_http_module.so", REDIS_CLIENT]
    return [str(path) for path in needs if not path.exists()]


def _lua(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid Lua string literal for these values
    if isinstance(value, list):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    raise TypeError(value)


def settings_lua(settings: dict[str, Any]) -> str:
    body = ",\n".join(f"  {name} = {_lua(value)}" for name, value in sorted(settings.items()))
    return "return {\n" + body + "\n}\n"


_CONF = """
daemon off;
master_process on;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
load_module {modules}/ndk_http_module.so;
load_module {modules}/ngx_http_lua_module.so;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    charset utf-8;
    server_tokens off;
    map $http_x_request_id $shortener_request_id {{
        default $request_id;
        "~^[A-Za-z0-9._:-]{{1,128}}$" $http_x_request_id;
    }}
    log_format edge escape=json '{{"request_id":"$shortener_request_id","method":"$request_method",'
        '"uri":"$request_uri","status":$status,"request_time":$request_time,'
        '"upstream_addr":"$upstream_addr","edge":"$shortener_edge",'
        '"edge_breaker":"$shortener_edge_breaker"}}';
    access_log {dir}/access.log edge;
    lua_package_path "{lua_dir}/?.lua;/usr/share/lua/5.1/?.lua;;";
    lua_shared_dict shortener_edge 1m;
    init_by_lua_block {{
        require("shortener_edge").init(dofile("{dir}/edge_settings.lua"))
    }}
    upstream shortener {{
        server 127.0.0.1:{upstream_port};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        add_header X-Request-ID $shortener_request_id always;
        set $shortener_edge "";
        set $shortener_edge_breaker "";
        set $shortener_click_id "";
        location = /health {{
            proxy_pass http://shortener;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location ~ "^/[A-Za-z0-9_-]{{1,64}}$" {{
            access_by_lua_block {{
                require("shortener_edge").redirect()
            }}
            proxy_pass http://shortener;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Request-ID $shortener_request_id;
            proxy_set_header X-Shortener-Click-Id $shortener_click_id;
            proxy_hide_header X-Request-ID;
            proxy_redirect off;
        }}
    }}
}}
"""


@dataclass
class Edge:
    proc: subprocess.Popen[bytes]
    directory: Path
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access(self) -> list[dict[str, Any]]:
        path = self.directory / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def access_of(self, request_id: str) -> dict[str, Any]:
        # Nginx writes the line after the answer: give it a moment.
        for _ in range(50):
            lines = [line for line in self.access() if line["request_id"] == request_id]
            if lines:
                return lines[-1]
            time.sleep(0.02)
        raise AssertionError(f"no access line for {request_id}: {self.access()[-5:]}")

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def run_edge(directory: Path, upstream_port: int, redis_port: int, **overrides: Any) -> Iterator[Edge]:
    """Nginx with the edge on a free port, in front of 127.0.0.1:upstream_port."""
    directory.mkdir(parents=True, exist_ok=True)
    lua_dir = directory / "lua"
    lua_dir.mkdir(exist_ok=True)
    # The role installs both files side by side; so does this.
    (lua_dir / "shortener_edge.lua").write_bytes(EDGE_LUA.read_bytes())
    (lua_dir / "redirect_hit.lua").write_bytes(HIT_SCRIPT.read_bytes())
    settings = {
        **DEFAULTS,
        "dict": "shortener_edge",
        "script": str(lua_dir / "redirect_hit.lua"),
        "redis_host": "127.0.0.1",
        "redis_port": redis_port,
        **overrides,
    }
    (directory / "edge_settings.lua").write_text(settings_lua(settings))
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        _CONF.format(dir=directory, modules=MODULES, lua_dir=lua_dir, upstream_port=upstream_port, port=port)
    )
    check = subprocess.run([str(NGINX), "-t", "-q", "-p", str(directory), "-c", str(conf)], capture_output=True)
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t failed: {check.stderr.decode()}")
    with open(directory / "stderr.log", "ab") as err:
        proc = subprocess.Popen(
            [str(NGINX), "-p", str(directory), "-c", str(conf)],
            stdout=err,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ},
        )
    edge = Edge(proc, directory, port)
    try:
        deadline = time.monotonic() + 15
        while not port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start:\n{edge.error_log()[-3000:]}")
            time.sleep(0.05)
        yield edge
    finally:
        edge.stop()


__all__ = ["DEFAULTS", "Edge", "free_port", "missing", "run_edge"]
