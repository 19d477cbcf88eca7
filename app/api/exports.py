"""A link's clicks as CSV (streamed) and its QR code: /urls/<id>/clicks.csv, /urls/<id>/qr.svg|png.

Both for the link's owner's key or an admin key, like its statistics (app/access.py).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import segno
from flask import Blueprint, Response

from app import sql
from app.db import Database
from app.links import base_url, visible_link
from app.services import services

bp = Blueprint("exports", __name__)

# Rows per query: the export reads the raw clicks page by page (keyset on time and click id),
# so memory stays bounded however many clicks a link has, and no transaction stays open.
EXPORT_PAGE = 5000
CSV_COLUMNS = ["time", "click_id", "is_bot", "browser", "os", "device", "referrer_domain", "visitor", "client_addr"]
QR_TYPES = {"svg": "image/svg+xml", "png": "image/png"}


def _csv_rows(db: Database, url_id: int) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    after: tuple[Any, str] | None = None
    while True:
        params = {"url_id": url_id, "ts": after[0] if after else None, "click_id": after[1] if after else ""}
        rows = db.fetch_all(sql.EXPORT_CLICKS, {**params, "limit": EXPORT_PAGE})
        for row in rows:
            writer.writerow([row["ts"].isoformat(), *(row[c] for c in CSV_COLUMNS[1:])])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < EXPORT_PAGE:
            return
        after = (rows[-1]["ts"], rows[-1]["click_id"])


@bp.get("/urls/<id:url_id>/clicks.csv")
def export_clicks(url_id: int) -> Response:
    link = visible_link(url_id)
    # The generator runs after the view returned: it reads the services it needs now.
    rows = _csv_rows(services().db, url_id)
    response = Response(rows, mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{link["short_code"]}-clicks.csv"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/urls/<id:url_id>/qr.<any(svg, png):kind>")
def qr_code(url_id: int, kind: str) -> Response:
    link = visible_link(url_id)
    code = segno.make(f"{base_url().rstrip('/')}/{link['short_code']}", error="m")
    out = io.BytesIO()
    if kind == "svg":
        code.save(out, kind="svg", scale=4, border=2, xmldecl=False)
    else:
        code.save(out, kind="png", scale=8, border=2)
    response = Response(out.getvalue(), mimetype=QR_TYPES[kind])
    response.headers["Cache-Control"] = "private, max-age=300"
    return response
