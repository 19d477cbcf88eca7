"""The API key the load tests and lab tools send to a keys-profile deployment.

Deployments run the keys profile (docs/deployment.md): redirects, /health and an anonymous
POST /urls need no key, everything else does, and anonymous creation is limited per client
address. So the tools send the admin key with every API call, and an admin key's limits leave
room for them. Where it comes from, first found wins: --api-key, the environment variable
SHORTENER_API_KEY, the file the lab's converge generated (ansible/.secrets/ next to the
inventories). The key is never printed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ENV = "SHORTENER_API_KEY"
KEY_FILE = Path(__file__).resolve().parents[1] / "ansible" / ".secrets" / "shortener_admin_api_key"


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"admin API key (default: ${ENV}, else {KEY_FILE.relative_to(KEY_FILE.parents[2])})",
    )


def resolve(given: str | None = None) -> str:
    """The key to send; SystemExit with what to do when there is none."""
    key = given or os.environ.get(ENV) or (KEY_FILE.read_text().strip() if KEY_FILE.exists() else "")
    if not key:
        raise SystemExit(f"no API key: pass --api-key, set {ENV} or converge a lab host (it writes {KEY_FILE})")
    return key


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
