"""The web page at /: a form that shortens a link, server-rendered, no JavaScript needed."""

from __future__ import annotations

from flask import Blueprint, render_template, request
from pydantic import ValidationError

from app import access
from app.links import base_url, create_link
from app.schemas import UrlIn, url_out
from app.services import services

bp = Blueprint("web", __name__)


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
    except ValidationError:
        error = "That does not look like a web address. Use a full link that starts with http:// or https://."
        return render_template("index.html", link=None, error=error, value=value), 422
    link = url_out(create_link(data, via="web"), base_url())
    return render_template("index.html", link=link, error=None, value=""), 201
