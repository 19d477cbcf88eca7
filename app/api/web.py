"""The web page at /: a form that shortens a link, server-rendered, no JavaScript needed."""

from __future__ import annotations

from flask import Blueprint, render_template, request
from pydantic import ValidationError

from app import urlpolicy
from app.api.urls import base_url, create_link
from app.schemas import UrlIn, url_out

bp = Blueprint("web", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html", link=None, error=None, value="")


@bp.post("/")
def shorten() -> tuple[str, int]:
    value = request.form.get("original_url", "")
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
