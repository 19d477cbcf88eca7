"""The pages as the lab's Discord sink (the discord_sink role, on the monitoring host) received
them: when a page arrived, and which are still unresolved."""

from __future__ import annotations

import json
import re
import time

import yaml

from chaos.lab import ROOT, host, ssh

SINK = "http://127.0.0.1:9095/messages"
ALERTMANAGER_DEFAULTS = ROOT / "ansible" / "roles" / "alertmanager" / "defaults" / "main.yml"
# A message's title as the alertmanager role's template writes it:
# "[FIRING:2] RedisDown (critical)" or "[RESOLVED] RedisDown (critical)".
_TITLE = re.compile(r"\[(FIRING|RESOLVED)(?::\d+)?\] (\w+)")


def messages(configuration: dict, since: float) -> list[dict]:
    """The messages received after `since` (epoch seconds), oldest first; none if unreadable."""
    out = ssh(host(configuration, "monitoring"), f"curl -sf '{SINK}?since={since}'", check=False)
    try:
        received = json.loads(out or "[]")
    except ValueError:
        return []
    return sorted(received, key=lambda m: m["received_at"])


def reports(message: dict) -> list[tuple[str, str]]:
    """(FIRING or RESOLVED, alert name) for each title of the message (Alertmanager's
    discord_configs send one embed; a description's text never counts)."""
    titles = [embed.get("title") or "" for embed in message.get("embeds") or []]
    return [(m.group(1), m.group(2)) for m in _TITLE.finditer("\n".join([message.get("content") or "", *titles]))]


def still_firing(received: list[dict]) -> set[str]:
    """Alert names whose latest message (by received_at) reports them firing."""
    latest: dict[str, str] = {}
    for message in sorted(received, key=lambda m: m["received_at"]):
        for status, name in reports(message):
            latest[name] = status
    return {name for name, status in latest.items() if status == "FIRING"}


def alert_received(alert: str, configuration: dict, since: float) -> float | None:
    """Epoch seconds at which the sink first received a message reporting the alert firing."""
    for message in messages(configuration, since):
        if ("FIRING", alert) in reports(message):
            return float(message["received_at"])
    return None


def blockers(alert: str) -> set[str]:
    """The alerts whose unresolved page would keep `alert`'s page from being sent: itself,
    and the alerts that inhibit it (the alertmanager role's alertmanager_inhibitions)."""
    defaults = yaml.safe_load(ALERTMANAGER_DEFAULTS.read_text())
    return {alert} | {i["source"] for i in defaults["alertmanager_inhibitions"] if alert in i["targets"]}


def wait_pages_resolved(configuration: dict, alert: str, since: float, timeout: float = 420) -> set[str]:
    """Waits until no page that would hold back `alert`'s (blockers()) is unresolved at the
    sink since `since`; returns those still firing at the timeout.

    Alertmanager notifies a new firing only for a new group: an alert that fires again
    before its group was flushed as resolved (group_interval: 1 min for pages, 5 min for
    warnings) joins the old group and no message comes. The first full run's 06 (Redis hung,
    right after 05, Redis stopped) showed "RedisDown not received" for that reason. Only the
    blockers are waited for: the slow ones that do not matter (ShortenerErrorBudgetBurnFast
    and ShortenerEdgeDegraded resolve 5-15 min after a fault) made a run 30 min longer."""
    deadline = time.monotonic() + timeout
    waited = blockers(alert)
    while (firing := still_firing(messages(configuration, since)) & waited) and time.monotonic() < deadline:
        time.sleep(5)
    return firing
