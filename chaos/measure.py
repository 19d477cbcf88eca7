"""What one experiment did to the users: the figures of one row of docs/chaos.md."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from chaos.lab import EXPECTED, Answer, psql

# A run of successes this long at the end of the observation counts as recovered.
SETTLED = 5.0


@dataclass
class Row:
    name: str
    title: str
    status: str  # Chaos Toolkit's: completed, deviated, failed, aborted
    fault_at: float
    heal_at: float
    started_at: float
    ended_at: float
    requests: int = 0
    errors_fault: dict[str, int] = field(default_factory=dict)
    errors_after: dict[str, int] = field(default_factory=dict)
    hot_served: float = 1.0
    alert: str = ""
    alert_after: float | None = None
    user_visible: bool = False
    recovery: float | None = None
    creates_acked: int = 0
    creates_lost: int = 0
    clicks_answered: int = 0
    clicks_lost: int = 0
    p99_fault_ms: float = 0.0
    # The commit the suite ran at (a "+" when the tree had uncommitted changes) and the
    # machine's 1-minute load average when the experiment started: rows of other runs are kept.
    commit: str = ""
    load: str = ""
    # Why the experiment did not run on this host (its precondition), empty when it ran.
    not_run: str = ""
    # What the experiment's "proof:" activities read from the host that the fault was one
    # (13: the kernel's count of OOM kills), shown next to its title.
    evidence: str = ""


def failed(answer: Answer) -> bool:
    return answer.status != EXPECTED[answer.kind]


def errors_by_status(answers: list[Answer]) -> dict[str, int]:
    return dict(sorted(Counter(str(a.status) for a in answers if failed(a)).items()))


def recovery_after(answers: list[Answer], heal_at: float, ended_at: float) -> float | None:
    """Seconds from the heal to the last failed request; None if failures go on to the end."""
    last = max((a.at for a in answers if a.at >= heal_at and failed(a)), default=None)
    if last is None:
        return 0.0
    return None if ended_at - last < SETTLED else last - heal_at


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def codes_present(address: str, codes: list[str]) -> set[str]:
    if not codes:
        return set()
    listed = ",".join(f"'{c}'" for c in codes if c.isalnum())
    return set(psql(address, f"SELECT short_code FROM urls WHERE short_code IN ({listed})").split())


def clicks_stored(address: str, codes: list[str]) -> Counter[str]:
    listed = ",".join(f"'{c}'" for c in codes if c.isalnum())
    out = psql(
        address,
        "SELECT u.short_code, count(*) FROM events e JOIN urls u ON u.id = e.url_id "
        f"WHERE e.event_type = 'click' AND u.short_code IN ({listed}) GROUP BY 1",
    )
    return Counter({code: int(n) for code, n in (line.split("|") for line in out.splitlines() if line)})


def clicks_lost(address: str, answers: list[Answer], wait: float = 120) -> tuple[int, int]:
    """302s answered vs click events stored for those links, once the click queue had time to
    drain (the worker writes them): (answered, lost)."""
    answered = Counter(a.code for a in answers if a.kind in ("hot", "cold") and a.status == 302)
    if not answered:
        return 0, 0
    deadline = time.monotonic() + wait
    while True:
        stored = clicks_stored(address, list(answered))
        lost = sum(max(0, n - stored[code]) for code, n in answered.items())
        if lost == 0 or time.monotonic() > deadline:
            return sum(answered.values()), lost
        time.sleep(3)


def fill(row: Row, answers: list[Answer], db: str) -> Row:
    during = [a for a in answers if row.fault_at <= a.at < row.heal_at]
    after = [a for a in answers if a.at >= row.heal_at]
    hot = [a for a in during if a.kind == "hot"]
    row.requests = len(answers)
    row.errors_fault = errors_by_status(during)
    row.errors_after = errors_by_status(after)
    row.hot_served = sum(1 for a in hot if not failed(a)) / len(hot) if hot else 1.0
    row.user_visible = bool(row.errors_fault or row.errors_after)
    row.recovery = recovery_after(answers, row.heal_at, row.ended_at)
    row.p99_fault_ms = 1000 * p99([a.latency for a in during])
    acked = [a.code for a in answers if a.kind == "create" and a.status == 201 and a.code]
    row.creates_acked = len(acked)
    row.creates_lost = len(set(acked) - codes_present(db, acked))
    row.clicks_answered, row.clicks_lost = clicks_lost(db, answers)
    return row
