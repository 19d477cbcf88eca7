"""Verify the analytics' once-only step: the shortener role has fed the clicks stored before the
analytics to the statistics (python -m app.clickstore backfill), recorded that it ran to the end,
and running it again does nothing (docs/analytics.md)."""

from __future__ import annotations

import json

from labkit.hosts import hosts_of

# The role runs the backfill once, from the first app host.
testinfra_hosts = hosts_of("app")[:1]

BACKFILL = (
    "systemd-run --wait --pipe --collect --quiet --uid=shortener --gid=shortener"
    " --working-directory=/opt/shortener/src --property=EnvironmentFile=/etc/shortener/shortener.env"
    " /opt/shortener/venv/bin/python -m app.clickstore backfill"
)


def test_the_backfill_ran_once_and_a_second_run_does_nothing(host):
    answer = json.loads(host.check_output(BACKFILL))
    assert answer["backfilled"] == 0
    assert answer["done_before"], answer
    # click_spans (migration 0007) was filled from the daily rollup by the role's run, once.
    assert answer["spans_filled"] is None, answer
