"""chaos/sink.still_firing: which pages the Discord sink last saw firing. The suite waits
for them to resolve before the next experiment, or that experiment's page joins a group
Alertmanager already notified and never reaches the sink (the first full run's 06)."""

from __future__ import annotations

from chaos.sink import blockers, still_firing


def _message(at: float, title: str, description: str = "") -> dict:
    """A message as the sink stores it: Alertmanager's discord_configs send one embed."""
    return {
        "received_at": at,
        "webhook_id": "1",
        "content": None,
        "embeds": [{"title": title, "description": description}],
    }


def test_a_page_followed_by_its_resolution_is_settled() -> None:
    messages = [_message(10, "[FIRING:1] RedisDown (critical)"), _message(80, "[RESOLVED] RedisDown (critical)")]
    assert still_firing(messages) == set()


def test_the_latest_message_decides_whatever_the_order_they_are_listed_in() -> None:
    messages = [
        _message(200, "[FIRING:2] ShortenerInstanceDown (warning)"),
        _message(10, "[FIRING:1] RedisDown (critical)"),
        _message(80, "[RESOLVED] RedisDown (critical)"),
        _message(100, "[RESOLVED] ShortenerInstanceDown (warning)"),
    ]
    assert still_firing(messages) == {"ShortenerInstanceDown"}


def test_only_titles_count_not_the_text_of_a_description() -> None:
    messages = [
        _message(10, "[FIRING:1] PostgresqlDown (critical)"),
        _message(20, "[RESOLVED] PostgresqlDown (critical)", "quoted: [FIRING:1] PostgresqlDown"),
        _message(30, "hello", "[FIRING:1] RedisDown"),
    ]
    assert still_firing(messages) == set()


def test_no_messages_nothing_firing() -> None:
    assert still_firing([]) == set()


def test_an_alert_waits_for_itself_and_for_what_inhibits_it_only() -> None:
    """Read from the alertmanager role's defaults: ShortenerDown inhibits ShortenerInstanceDown."""
    assert blockers("ShortenerInstanceDown") == {"ShortenerInstanceDown", "ShortenerDown"}
    assert "RedisDown" in blockers("ShortenerEdgeDegraded")
    assert blockers("HostDiskFull") == {"HostDiskFull"}
