"""The docs keep up with the code."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_setting_is_documented():
    text = (DOCS / "configuration.md").read_text()
    missing = [
        f"SHORTENER_{name.upper()}" for name in Settings.model_fields if f"`SHORTENER_{name.upper()}`" not in text
    ]
    assert missing == []


def test_documented_settings_exist():
    import re

    text = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"`SHORTENER_([A-Z_]+)`", text))
    known = {name.upper() for name in Settings.model_fields} | {"CLICKWORKER_NAME"}
    assert documented - known == set()
