"""Link options at the Nginx edge: the same Redis script decides, so a capped link gives exactly
N redirects under 50 concurrent clients through the edge, and an expired one stops at once."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as redis_lib

from app import clicks
from tests import edge_nginx, test_edge_redirect
from tests.test_edge_redirect import get, stream_clicks

instance = test_edge_redirect.instance
edge = test_edge_redirect.edge

pytestmark = pytest.mark.slow


def test_max_clicks_gives_exactly_n_redirects_through_the_edge(
    edge: edge_nginx.Edge, make_url: Any, redis: redis_lib.Redis
) -> None:
    url = make_url(max_clicks=20)
    path = f"/{url['short_code']}"
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: get(edge, path).status_code, range(150)))
    assert statuses.count(302) == 20
    assert statuses.count(404) == 130
    queued = stream_clicks(redis, url["short_code"])
    assert len(queued) == 20
    # The edge hands the client's address to the stream (the worker hashes it, then drops it).
    assert {f[clicks.F_ADDRESS] for f in queued} == {"127.0.0.1"}
    request_id = "edge-capped"
    assert get(edge, path, **{"X-Request-ID": request_id}).status_code == 404
    assert edge.access_of(request_id)["edge"] == "negative"


def test_an_expired_link_stops_at_once_at_the_edge(edge: edge_nginx.Edge, make_url: Any) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    url = make_url(expires_at=expires.isoformat())
    path = f"/{url['short_code']}"
    assert get(edge, path).status_code == 302  # fills the cache
    assert get(edge, path, **{"X-Request-ID": "edge-live"}).status_code == 302
    assert edge.access_of("edge-live")["edge"] == "hit"
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1.1)
    gone = get(edge, path, **{"X-Request-ID": "edge-expired"})
    assert gone.status_code == 404 and gone.json()["error"]
    assert edge.access_of("edge-expired")["edge"] == "negative"
