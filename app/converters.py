"""URL converters: path parameters checked by the router, before any view runs."""

from __future__ import annotations

from werkzeug.exceptions import NotFound
from werkzeug.routing import BaseConverter

BIGINT_MAX = 2**63 - 1


class IdConverter(BaseConverter):
    """``<id:name>``: a row id, 1 to PostgreSQL's bigint maximum.

    Digits out of that range are a 404 at once, before the view (and before the database
    would refuse the value). Raising NotFound rather than failing the match keeps Werkzeug from
    trying the other routes, which would answer a PUT or DELETE with 405 instead.
    """

    regex = r"\d+"
    weight = 50

    def to_python(self, value: str) -> int:
        number = int(value)
        if not 1 <= number <= BIGINT_MAX:
            raise NotFound()
        return number

    def to_url(self, value: int) -> str:
        return str(int(value))
