"""A range of whole UTC days cut into the rows GET /stats/top reads (click_daily, click_spans).

click_spans holds, per link, the sums of aligned runs of sql.SPAN_DAYS days (4, 16, 64): a run
of n days starts on a day whose number since sql.SPAN_EPOCH is a multiple of n. Taking from the
left the longest run that starts on the current day and fits, else the single day, covers a
90-day range with about 9 rows per link (at most 15) instead of 90.
"""

from __future__ import annotations

from datetime import date, timedelta

from app import sql

_EPOCH = date.fromisoformat(sql.SPAN_EPOCH)
_LONGEST_FIRST = sorted(sql.SPAN_DAYS, reverse=True)


def cover(start: date, end: date) -> tuple[list[date], list[tuple[int, date]]]:
    """[start, end) as single days and (days, first day) runs; together each day exactly once."""
    days: list[date] = []
    runs: list[tuple[int, date]] = []
    day = start
    while day < end:
        offset = (day - _EPOCH).days
        size = next((n for n in _LONGEST_FIRST if offset % n == 0 and day + timedelta(days=n) <= end), 1)
        if size == 1:
            days.append(day)
        else:
            runs.append((size, day))
        day += timedelta(days=size)
    return days, runs
