"""Hostile input: nesting, sizes, overflowing paging, far ids, odd encodings, bounded listings."""

from __future__ import annotations

import io
import json

import psycopg2
import pytest

from app import sql as statements


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _assert_json_error(response, status: int | tuple[int, ...]) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.get_data()[:200])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body["error"], str)
    return body


# --- JSON nesting and size -------------------------------------------------------------------
def test_nesting_up_to_the_cap_is_accepted(client):
    # The body object is level 1, details level 2: 30 more levels make 32.
    body = {"event_type": "deep", "details": _nested(31)}
    response = client.post("/events", json=body)
    assert response.status_code == 201, response.get_json()


def test_nesting_past_the_cap_is_422(client, sql):
    body = _assert_json_error(client.post("/events", json={"event_type": "deep", "details": _nested(32)}), 422)
    assert body["details"] == {"body": "nested deeper than 32 levels"}
    assert sql("SELECT count(*) FROM events") == [(0,)]


@pytest.mark.parametrize("path", ["/users", "/urls", "/events"])
def test_nesting_that_breaks_the_parser_is_422_not_500(client, path):
    # 100,000 levels: json.loads itself raised RecursionError, which was a 500.
    raw = '{"a":' * 100_000 + "1" + "}" * 100_000
    body = _assert_json_error(client.post(path, data=raw, content_type="application/json"), 422)
    assert "nested deeper" in body["error"]
    raw_list = "[" * 100_000 + "]" * 100_000
    _assert_json_error(client.post(path, data=raw_list, content_type="application/json"), 422)


def test_the_nesting_cap_is_a_setting(app_factory):
    client = app_factory(json_max_depth=3).test_client()
    assert client.post("/events", json={"event_type": "x", "details": {"a": 1}}).status_code == 201
    _assert_json_error(client.post("/events", json={"event_type": "x", "details": {"a": {"b": [1]}}}), 422)


def test_event_details_over_the_size_cap_are_422(client, sql):
    # 16 KiB of compact JSON is the default cap: {"k":"<text>"} has 8 bytes around the text.
    at_cap = {"k": "x" * (16 * 1024 - 8)}
    assert client.post("/events", json={"event_type": "big", "details": at_cap}).status_code == 201
    over = {"k": "x" * (16 * 1024 - 7)}
    body = _assert_json_error(client.post("/events", json={"event_type": "big", "details": over}), 422)
    assert "at most 16384 bytes" in body["details"]["details"]
    # Multi-byte characters count as their UTF-8 bytes.
    wide = {"k": "\u00e9" * 8200}
    _assert_json_error(client.post("/events", json={"event_type": "big", "details": wide}), 422)
    assert sql("SELECT count(*) FROM events") == [(1,)]


def test_the_details_cap_is_a_setting(app_factory):
    client = app_factory(event_details_max_bytes=300).test_client()
    _assert_json_error(client.post("/events", json={"event_type": "x", "details": {"k": "y" * 300}}), 422)


# --- encodings and odd bytes ---------------------------------------------------------------
@pytest.mark.parametrize("charset", ["latin-1", "utf-16", "iso-8859-5", "x-unknown"])
def test_a_json_body_in_another_charset_is_400(client, charset):
    raw = json.dumps({"username": "z\u00e9", "email": "z@example.com"}).encode("utf-8")
    response = client.post("/users", data=raw, content_type=f"application/json; charset={charset}")
    assert "UTF-8" in _assert_json_error(response, 400)["error"]


def test_utf8_declared_explicitly_is_fine(client):
    raw = json.dumps({"username": "z\u00e9", "email": "z@example.com"}).encode("utf-8")
    assert client.post("/users", data=raw, content_type="application/json; charset=UTF-8").status_code == 201


def test_utf16_bytes_are_not_guessed_into_json(client):
    raw = json.dumps({"username": "zz", "email": "z@example.com"}).encode("utf-16")
    _assert_json_error(client.post("/users", data=raw, content_type="application/json"), 400)


def test_a_body_that_is_one_huge_string_is_400(client):
    raw = json.dumps("x" * (4 * 1024 * 1024))
    _assert_json_error(client.post("/urls", data=raw, content_type="application/json"), 400)


@pytest.mark.parametrize(
    "query",
    [
        "event_type=a%00b",
        "event_type=" + "e" * 5000,
        "url_id=%00",
        "url_id=1%00",
        "page=%EF%BC%91",  # a full-width 1
        "user_id=" + "9" * 30,
    ],
)
def test_query_strings_with_nul_surrogates_or_long_values_are_400(client, query):
    _assert_json_error(client.get(f"/events?{query}"), 400)


def test_the_bytes_of_a_lone_surrogate_in_a_query_are_replaced_not_a_500(client):
    # Werkzeug decodes a query as UTF-8 with replacement: U+FFFD is an ordinary filter value.
    response = client.get("/events?event_type=%ED%A0%80")
    assert response.status_code == 200 and response.get_json() == []


def test_lone_surrogates_in_json_are_422(client):
    raw = '{"event_type": "x", "details": {"k": "\\ud800"}}'
    _assert_json_error(client.post("/events", data=raw, content_type="application/json"), 422)
    raw = '{"username": "\\udfff", "email": "s@example.com"}'
    _assert_json_error(client.post("/users", data=raw, content_type="application/json"), 422)


def test_header_values_with_nul_or_great_length_do_no_harm(client, make_url):
    url = make_url()
    response = client.get(
        f"/{url['short_code']}",
        headers={"X-Request-ID": "a\x00b", "User-Agent": "ua\x00" + "u" * 20_000, "Referer": "\udcff" + "r" * 9000},
    )
    assert response.status_code == 302
    assert len(response.headers["X-Request-ID"]) == 32  # replaced by a fresh id
    response = client.get("/users", headers={"X-Request-ID": "x" * 10_000})
    assert response.status_code == 200 and len(response.headers["X-Request-ID"]) == 32


# --- paging ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query, field",
    [
        ("page=9223372036854775807&per_page=1000", "page"),
        ("page=9223372036854775808", "page"),
        ("page=99999999999999999999", "page"),
        ("per_page=9223372036854775808", "per_page"),
        ("page=1002&per_page=1000", "page"),
        ("page=1000001", "page"),
    ],
)
@pytest.mark.parametrize("path", ["/users", "/urls", "/events"])
def test_paging_that_overflows_or_goes_too_far_is_400(client, path, query, field):
    body = _assert_json_error(client.get(f"{path}?{query}"), 400)
    assert field in body["details"], body


def test_the_last_page_within_the_offset_cap_is_served(client):
    # offset = (1001 - 1) * 1000 = 1,000,000: exactly the default cap.
    assert client.get("/users?page=1001&per_page=1000").get_json() == []
    assert client.get("/events?page=50001&per_page=20").status_code == 200


def test_the_offset_cap_is_a_setting(app_factory):
    client = app_factory(paging_max_offset=1000).test_client()
    assert client.get("/urls?page=11&per_page=100").status_code == 200
    _assert_json_error(client.get("/urls?page=12&per_page=100"), 400)


@pytest.mark.parametrize("query", ["user_id=9223372036854775808", "url_id=9223372036854775807"])
def test_id_filters_beyond_bigint_are_400_and_at_its_end_find_nothing(client, query):
    response = client.get(f"/events?{query}")
    if "808" in query:
        _assert_json_error(response, 400)
    else:
        assert response.status_code == 200 and response.get_json() == []


# --- bulk import and the id sequences ---------------------------------------------------------
def _csv(client, text: str):
    data = {"file": (io.BytesIO(text.encode()), "users.csv")}
    return client.post("/users/bulk", data=data, content_type="multipart/form-data")


def test_bulk_rows_with_ids_far_above_the_largest_are_refused_per_row(client, sql):
    text = (
        "id,username,email\n"
        "5,five,five@example.com\n"
        "9223372036854775806,far,far@example.com\n"
        "1000000,edge,edge@example.com\n"
        "1000001,over,over@example.com\n"
        "99999999999999999999999,huge,huge@example.com\n"
        "\u00b2,super,super@example.com\n"
    )
    response = _csv(client, text)
    assert response.status_code == 201
    body = response.get_json()
    # Refused rows are reported like invalid ones and not counted as processed.
    assert body["imported"] == body["count"] == 3
    assert body["skipped"] == 3
    assert set(body["errors"]) == {"line 3", "line 5", "line 6"}
    assert "too far past the largest id" in body["errors"]["line 3"]
    # The head room counts from the largest id before the import (none: 0).
    assert sql("SELECT id FROM users WHERE id > 1 ORDER BY id") == [(5,), (1000000,)]
    assert sql("SELECT count(*) FROM users WHERE email = 'super@example.com'") == [(1,)]  # "²" is no id
    # The sequence stays usable: the next user gets the next id.
    created = client.post("/users", json={"username": "next", "email": "next@example.com"})
    assert created.status_code == 201
    assert created.get_json()["id"] == 1000001


def test_the_id_head_room_is_a_setting_and_counts_from_the_largest_id(app_factory, sql):
    client = app_factory(bulk_id_headroom=10).test_client()
    assert _csv(client, "id,username,email\n10,a,a@example.com\n11,b,b@example.com\n").get_json()["count"] == 1
    assert _csv(client, "id,username,email\n20,b,b@example.com\n").get_json()["count"] == 1
    assert [r[0] for r in sql("SELECT id FROM users ORDER BY id")] == [10, 20]


def test_reset_sequences_ignores_ids_past_2_to_the_53(client, sql, stack):
    # A row that got in some other way (by hand, an old import) near the end of bigint.
    sql("INSERT INTO users (id, username, email) VALUES (9223372036854775806, 'end', 'end@example.com')")
    sql("INSERT INTO users (id, username, email) VALUES (41, 'low', 'low@example.com')")
    conn = psycopg2.connect(stack.direct_database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statements.RESET_SEQUENCES)
    finally:
        conn.close()
    created = client.post("/users", json={"username": "after", "email": "after@example.com"})
    assert created.status_code == 201
    assert created.get_json()["id"] == 42


# --- GET /events does bounded work -----------------------------------------------------------
def test_the_drain_before_a_listing_is_bounded(app_factory, redis, sql):
    app = app_factory(events_drain_max=3)
    client = app.test_client()
    code = client.post("/urls", json={"original_url": "https://example.com/x"}).get_json()["short_code"]
    for _ in range(8):
        assert client.get(f"/{code}").status_code == 302
    stream = app.extensions["shortener"].settings.click_stream
    assert redis.xlen(stream) == 8
    client.get("/events?event_type=created")
    assert sql("SELECT count(*) FROM events WHERE event_type = 'click'") == [(3,)]
    # No drain at all when the cap is 0: the click worker alone writes clicks.
    app_factory(events_drain_max=0).test_client().get("/events")
    assert sql("SELECT count(*) FROM events WHERE event_type = 'click'") == [(3,)]
    # The default drains the whole (small) queue.
    app_factory().test_client().get("/events")
    assert sql("SELECT count(*) FROM events WHERE event_type = 'click'") == [(8,)]


def test_a_queued_click_that_is_not_utf8_does_not_break_the_listing(app_factory, redis, sql):
    """The drain before GET /events reads the stream with the service's own client: a foreign
    entry with latin-1 bytes is listed with a replacement character, not a 500."""
    import redis as redis_lib

    app = app_factory()
    client = app.test_client()
    url = client.post("/urls", json={"original_url": "https://example.com/x"}).get_json()
    settings = app.extensions["shortener"].settings
    raw = redis_lib.Redis.from_url(settings.redis_url)
    fields = {"c": "latin1-click", "u": str(url["id"]), "o": "", "t": "2026-12-01T01:00:00", "s": url["short_code"]}
    raw.xadd(settings.click_stream, {**fields, "a": b"agent \xe9"})
    raw.close()
    listed = client.get(f"/events?url_id={url['id']}&event_type=click")
    assert listed.status_code == 200
    assert [e["details"]["user_agent"] for e in listed.get_json()] == ["agent \ufffd"]
    assert redis.xlen(settings.click_stream) == 1  # listed from the table; the worker still acknowledges it


@pytest.mark.parametrize(
    "leading, filters, bound",
    [
        ("event_type", {"event_type": "deleted", "url_id": None, "user_id": None}, 240),
        # Clicks have no index of their own (migration 0007): the primary key in order, where
        # every other row here is one (in production nearly every row).
        ("event_type", {"event_type": "click", "url_id": None, "user_id": None}, 300),
        ("url_id", {"event_type": None, "url_id": 50, "user_id": None}, 240),
        ("user_id", {"event_type": None, "url_id": None, "user_id": 20}, 240),
        # Several filters: the planner multiplies their selectivities and may read all the
        # rows of the leading filter's value, still not the table (docs/failure-modes.md).
        ("url_id", {"event_type": "deleted", "url_id": 50, "user_id": 20}, 20_000),
    ],
)
def test_a_filtered_event_page_reads_about_as_many_rows_as_it_returns(sql, stack, leading, filters, bound):
    """The worst case of ORDER BY id LIMIT with a filter: the matching rows are the newest (a
    link that just went viral). Walking the primary key and filtering then reads the whole
    table; an index on (filter, id) reads the page and what it skips, nothing more."""
    sql("SET statement_timeout = 0")
    sql(
        "INSERT INTO users (id, username, email) SELECT g, 'u' || g, 'u' || g || '@e.com' FROM generate_series(1, 20) g"
    )
    sql(
        "INSERT INTO urls (id, user_id, short_code, original_url)"
        " SELECT g, g % 20 + 1, 'c' || g, 'https://example.com' FROM generate_series(1, 50) g"
    )
    sql(
        "INSERT INTO events (url_id, user_id, event_type, details)"
        " SELECT g % 49 + 1, g % 19 + 1, (ARRAY['click','created'])[g % 2 + 1], '{}'"
        " FROM generate_series(1, 50000) g"
    )
    sql(
        "INSERT INTO events (url_id, user_id, event_type, details)"
        " SELECT 50, 20, 'deleted', '{}' FROM generate_series(1, 10000) g"
    )
    sql("ANALYZE events")
    limit, offset = 20, 100
    conn = psycopg2.connect(stack.direct_database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 0")
            cur.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + statements.LIST_EVENTS_BY[leading],
                {**filters, "owner_id": None, "limit": limit, "offset": offset},
            )
            plan = cur.fetchone()[0][0]["Plan"]
    finally:
        conn.close()
    touched = 0
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if "Scan" in node["Node Type"]:
            touched += node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
    assert touched <= bound, plan
