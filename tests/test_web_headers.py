"""The web page's own Content-Security-Policy (Nginx adds the other security headers)."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any


def style_hashes(html: str) -> set[str]:
    styles = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    assert styles, "the page has an inline <style>"
    return {"'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in styles}


def directives(header: str) -> dict[str, str]:
    return {part.split(" ", 1)[0]: part.split(" ", 1)[1] for part in (p.strip() for p in header.split(";")) if part}


def test_page_allows_only_its_own_style(client: Any) -> None:
    response = client.get("/")
    assert response.status_code == 200
    policy = directives(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["form-action"] == "'self'"
    assert "script-src" not in policy  # default-src 'none': no script at all
    assert set(policy["style-src"].split()) == style_hashes(response.get_data(as_text=True))


def test_form_answers_carry_the_policy_too(client: Any) -> None:
    for form in ({"original_url": "https://example.com/csp"}, {"original_url": "not a url"}):
        response = client.post("/", data=form)
        assert response.status_code in (201, 422)
        assert "Content-Security-Policy" in response.headers


def test_json_answers_get_no_page_policy(client: Any) -> None:
    response = client.get("/health")
    assert response.mimetype == "application/json"
    assert "Content-Security-Policy" not in response.headers
