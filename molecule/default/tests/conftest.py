"""What every verify module shares: the admin API key of the deployed hosts.

The hosts run the keys profile (docs/deployment.md): everything but the public endpoints needs
"Authorization: Bearer <api key>". The lab's admin key is the one the converge generated into
ansible/.secrets/shortener_admin_api_key; SHORTENER_API_KEY overrides it (a real inventory's
key, from Vault). The cluster scenario links this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

KEY_FILE = Path(__file__).resolve().parents[3] / "ansible" / ".secrets" / "shortener_admin_api_key"


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
