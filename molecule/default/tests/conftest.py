"""What every verify module shares: the admin API key of the deployed hosts.

The hosts run the keys profile (docs/deployment.md): everything but the public endpoints needs
"Authorization: Bearer <api key>". The lab's admin key is the one the converge generated into
ansible/.secrets/shortener_admin_api_key; SHORTENER_API_KEY overrides it (a real inventory's
key, from Vault). The cluster scenario links this file.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import requests

KEY_FILE = Path(__file__).resolve().parents[3] / "ansible" / ".secrets" / "shortener_admin_api_key"

# A Redis client in the host's own python3, for hosts without redis-cli (a cluster's lb host
# has only Nginx's Lua client): AUTH as a user, one command, its answer printed (an error as
# "-ERR...", nil as ""). The password comes from the environment, in no command line.
_RESP_CLIENT = r"""
import os, socket, sys
address, port, user, *words = sys.argv[1:]
def encode(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
with socket.create_connection((address, int(port)), timeout=5) as sock:
    sock.sendall(encode("AUTH", user, os.environ["REDIS_PASSWORD"]) + encode(*words))
    replies = sock.makefile("rb")
    def reply():
        line = replies.readline().rstrip(b"\r\n")
        if line[:1] == b"$":
            return b"" if int(line[1:]) < 0 else replies.read(int(line[1:]) + 2)[:-2]
        if line[:1] == b"*":
            return b"\n".join(reply() for _ in range(max(int(line[1:]), 0)))
        return line[1:] if line[:1] in (b"+", b":") else line
    auth = reply()
    print((reply() if auth == b"OK" else auth).decode())
"""


def redis_on(host, address: str, user: str, password: str, command: str, port: int = 6379) -> str:
    """One Redis command (words split on spaces) sent from `host` to address:port as `user`."""
    argv = " ".join(shlex.quote(word) for word in (address, str(port), user, *command.split()))
    script = shlex.quote(_RESP_CLIENT)
    return host.run(f"REDIS_PASSWORD={shlex.quote(password)} python3 -c {script} {argv}").stdout.strip()


def admin_api_key() -> str:
    key = os.environ.get("SHORTENER_API_KEY") or KEY_FILE.read_text().strip()
    assert key.startswith("shk_"), f"no admin API key in SHORTENER_API_KEY or {KEY_FILE}"
    return key


@pytest.fixture(scope="session")
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_api_key()}"}


@pytest.fixture(scope="session")
def api(admin_headers) -> requests.Session:
    """requests with the admin key on every call: the whole contract, as in the open profile."""
    session = requests.Session()
    session.headers.update(admin_headers)
    return session
