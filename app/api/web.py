"""The web page at /: a form that shortens a link, server-rendered, no JavaScript needed."""

from __future__ import annotations

import base64
import functools
import hashlib
import re

from flask import Blueprint, Response, current_app, render_template, request
from pydantic import ValidationError

from app import access, urlpolicy
from app.links import base_url, create_link
from app.schemas import UrlIn, url_out
from app.services import services

bp = Blueprint("web", __name__)

_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


# What the statistics page adds to the policy: its one script (/static/stats.js), the API
# calls it makes, and the QR code it shows from a blob.
_STATS_PAGE_EXTRA = "; script-src 'self'; connect-src 'self'; img-src blob:"


@functools.cache
def _content_security_policy(template: str = "index.html") -> str:
    # The page's one inline <style> is allowed by its hash (static text, so the template's
    # source is what the browser gets); nothing else loads, nothing runs, nothing frames it.
    # Nginx adds the other security headers to every answer; this policy is the page's own.
    source = current_app.jinja_loader.get_source(current_app.jinja_env, template)[0]  # type: ignore[union-attr]
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode() + "'"
        for style in _STYLE.findall(source)
    )
    policy = f"default-src 'none'; style-src {hashes}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    return policy + (_STATS_PAGE_EXTRA if template == "stats.html" else "")


@bp.after_request
def _page_headers(response: Response) -> Response:
    if response.mimetype == "text/html":
        template = "stats.html" if request.endpoint == "web.stats_page" else "index.html"
        response.headers["Content-Security-Policy"] = _content_security_policy(template)
    return response


@bp.get("/stats/view")
def stats_page() -> str:
    """A link's statistics (docs/analytics.md): the page asks for the key, the script fetches."""
    return render_template("stats.html")


@bp.get("/")
def index() -> str:
    return render_template("index.html", link=None, error=None, value="")


@bp.post("/")
def shorten() -> tuple[str, int]:
    value = request.form.get("original_url", "")
    if not access.current().is_admin and not services().settings.anonymous_create:
        error = "Creating links here is switched off on this server."
        return render_template("index.html", link=None, error=error, value=value), 403
    try:
        data = UrlIn.model_validate({"original_url": value})
    except ValidationError as exc:
        cause = exc.errors()[0].get("ctx", {}).get("error")
        if isinstance(cause, urlpolicy.Refused) and not isinstance(cause, urlpolicy.InvalidHost):
            # A well-formed link the URL policy refuses: say why, or the visitor retypes it.
            error = f"This link cannot be shortened: it {cause}."
        else:
            error = "That does not look like a web address. Use a full link that starts with http:// or https://."
        return render_template("index.html", link=None, error=error, value=value), 422
    link = url_out(create_link(data, via="web"), base_url())
    return render_template("index.html", link=link, error=None, value=""), 201
