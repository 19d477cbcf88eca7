"""Pure logic: no services needed."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from app import clicks, logs
from app.cache import CachedLink, CircuitBreaker
from app.config import Settings
from app.schemas import EventIn, UrlIn, UserIn, event_out, timestamp


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_probes_once_after_the_pause():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, reset_seconds=5, clock=clock)
    assert breaker.allow()
    assert not breaker.failure() and not breaker.failure()
    assert breaker.failure()  # the third opens it
    assert breaker.is_open and not breaker.allow()
    clock.now += 5
    assert breaker.allow()  # one probe
    assert not breaker.allow()  # and only one
    assert not breaker.failure()  # the probe failed: open for another pause
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    assert breaker.success()  # closed
    assert not breaker.is_open and breaker.allow()
    assert not breaker.success()


def test_breaker_success_resets_the_failure_count():
    breaker = CircuitBreaker(threshold=2, reset_seconds=1, clock=FakeClock())
    breaker.failure()
    breaker.success()
    assert not breaker.failure()
    assert not breaker.is_open


@pytest.mark.parametrize(
    "link",
    [
        CachedLink(1, None, 302, "https://e.com/a\tb"),
        CachedLink(99, 7, 301, "http://x.y/?q=1&r=\u00e9"),
    ],
)
def test_cached_link_round_trip(link):
    assert CachedLink.decode(link.encode()) == link


def test_click_fields_round_trip_into_a_row():
    click = clicks.new_click("https://ref", "agent")
    assert len(click.click_id) == 24
    row = clicks.row_from_fields(click.fields(5, None, "abc"))
    assert row["url_id"] == 5 and row["user_id"] is None and row["click_id"] == click.click_id
    assert row["details"] == {"short_code": "abc", "referrer": "https://ref", "user_agent": "agent"}
    empty = clicks.row_from_fields(clicks.new_click(None, None, "req-1").fields(1, 2, "x"))
    assert empty["details"]["referrer"] is None and empty["user_id"] == 2
    assert empty["details"]["request_id"] == "req-1"


def test_a_click_id_from_the_edge_is_kept_only_when_it_is_one():
    assert clicks.new_click(None, None, click_id="0123456789abcdef01234567").click_id == "0123456789abcdef01234567"
    for forged in ("x" * 24, "0123", "0123456789ABCDEF01234567", ""):
        assert clicks.new_click(None, None, click_id=forged).click_id != forged


def test_the_stream_holds_headers_as_the_edge_sent_them_and_rows_clip_them():
    fields = clicks.new_click(None, None).fields(1, None, "x")
    fields[clicks.F_USER_AGENT] = "a\x00b\x07" + "é" * 600
    agent = clicks.row_from_fields(fields)["details"]["user_agent"]
    assert agent == "ab" + "é" * (clicks.MAX_HEADER_CHARS - 2)


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("Mozilla/5.0 (X11)", "Mozilla/5.0 (X11)"),
        ("a\tb\x7fc", "a\tb\x7fc"),  # the tab and DEL stay: PostgreSQL takes them
        ("a\r\nb\x1f\x00c\x08", "abc"),
        ("caf\u00e9 \ud800x", "caf\u00e9 ?x"),  # a lone surrogate (not UTF-8) becomes "?"
        ("\x01" * 10 + "x" * 600, "x" * 512),
        ("", ""),
    ],
)
def test_stored_header_text_drops_controls_and_invalid_characters(sent, stored):
    fields = clicks.new_click(None, None).fields(1, None, "x")
    fields[clicks.F_REFERRER] = sent
    assert clicks.row_from_fields(fields)["details"]["referrer"] == (stored or None)


@pytest.mark.parametrize(
    "value",
    [
        "https://example.com",
        "http://example.com:8080/x",
        "https://93.184.215.14/a",
        "https://[2606:4700::1111]/",
        "https://sub.domain.example.co.uk/path?q=1",
        "HTTPS://EXAMPLE.COM",
        "https://b\u00fccher.example/",
    ],
)
def test_valid_urls(value):
    assert UrlIn(original_url=value).original_url == value


@pytest.mark.parametrize(
    "value",
    [
        "example.com",
        "https://",
        "https://-bad-.com",
        "https://example.123",
        "https://exa_mple.com",
        "mailto:a@b.co",
        "https://example.com:port/",
        "https://a..b",
        "http://\u00ff\u00ff\u00ff.\udc00",
        "https://e.com/\x00",
    ],
)
def test_invalid_urls(value):
    with pytest.raises(ValidationError):
        UrlIn(original_url=value)


def test_email_is_kept_as_written():
    assert UserIn(username=" Ann ", email="Ann@Example.COM").model_dump() == {
        "username": "Ann",
        "email": "Ann@Example.COM",
    }


def test_event_out_never_returns_a_non_object_details():
    from datetime import datetime

    row = {"id": 1, "url_id": None, "user_id": None, "event_type": "x", "timestamp": datetime(2025, 1, 2)}
    assert event_out({**row, "details": ["a"]})["details"] == {}
    assert event_out({**row, "details": {"k": 1}})["details"] == {"k": 1}
    assert timestamp(datetime(2025, 9, 19, 22, 25, 5, 123456)) == "2025-09-19T22:25:05"


def test_event_type_is_stripped_and_bounded():
    assert EventIn(event_type=" click ").event_type == "click"
    with pytest.raises(ValidationError):
        EventIn(event_type="   ")


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("SHORTENER_DB_POOL_MAX", "17")
    monkeypatch.setenv("SHORTENER_MIGRATE_ON_START", "false")
    settings = Settings()
    assert settings.db_pool_max == 17 and settings.migrate_on_start is False
    monkeypatch.setenv("SHORTENER_LIST_DEFAULT_LIMIT", "10")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("setting", "logged"), [("all", ["ok", "missing", "broken"]), ("errors", ["broken"]), ("off", [])]
)
def test_access_log_setting_decides_which_requests_get_a_line(capsys, setting, logged):
    logs.configure_logging("INFO", setting)
    try:
        for request_id, status in (("ok", 302), ("missing", 404), ("broken", 503)):
            logs.access_line(request_id, "GET", "/x", status, 0.001, "10.0.0.1")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    finally:
        logs.configure_logging("WARNING", "all")
    assert [line["request_id"] for line in lines] == logged
    assert all(line["logger"] == "shortener.access" for line in lines)


def test_access_log_setting_rejects_other_values(monkeypatch):
    monkeypatch.setenv("SHORTENER_ACCESS_LOG", "some")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("SHORTENER_ACCESS_LOG", "errors")
    assert Settings().access_log == "errors"


def test_address_lists_and_the_trusted_client_address():
    from app.addresses import Networks, client_address

    nets = Networks("10.0.0.0/8, ,::1,192.0.2.7")
    assert nets.contains("10.2.3.4") and nets.contains("::1") and nets.contains("192.0.2.7")
    assert nets.contains("::ffff:10.1.1.1")  # an IPv4 peer seen on an IPv6 socket
    assert not nets.contains("11.0.0.1") and not nets.contains("not-an-ip") and not nets.contains(None)
    with pytest.raises(ValueError, match="not an address"):
        Networks("10.0.0.0/8,10.0.0.0/33")
    loopback = Networks("127.0.0.0/8")
    assert client_address("127.0.0.1", " 198.51.100.2 ", loopback) == "198.51.100.2"
    assert client_address("203.0.113.1", "198.51.100.2", loopback) == "203.0.113.1"
    assert client_address("127.0.0.1", None, loopback) == "127.0.0.1"
