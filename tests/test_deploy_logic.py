"""The deployment's own Python: the instance list, the upstream members, the canary's verdict.

Pure functions, no services: the lab demonstration (docs/deployment.md, "Canary deploys")
runs them against a real Prometheus and Nginx.
"""

from __future__ import annotations

import argparse
import math

import canary_watch as watch
import nginx_upstream as upstream
import site_topology as topology


def test_instances_are_named_host_port_at_their_bind_address():
    hostvars = {
        "aio": {"shortener_instances": [8001, 8002], "shortener_bind_address": "127.0.0.1"},
        "app2": {"shortener_instances": [8001], "shortener_bind_address": "0.0.0.0", "site_address": "10.0.0.2"},
    }
    assert topology.app_instances(["aio", "app2"], hostvars) == [
        {"name": "aio:8001", "host": "aio", "port": 8001, "address": "127.0.0.1"},
        {"name": "aio:8002", "host": "aio", "port": 8002, "address": "127.0.0.1"},
        {"name": "app2:8001", "host": "app2", "port": 8001, "address": "10.0.0.2"},
    ]


def test_upstream_overrides_apply_by_name_over_the_defaults():
    servers = [{"name": "a:1", "address": "x", "port": 1}, {"name": "a:2", "address": "x", "port": 2, "weight": 3}]
    members = upstream.upstream_members(servers, {"a:1": {"state": "down"}})
    assert [(m["name"], m["state"], m["weight"]) for m in members] == [("a:1", "down", 1), ("a:2", "up", 3)]


def settings(**overrides: float) -> argparse.Namespace:
    values = {"min_requests": 100, "max_5xx_ratio": 0.01, "max_p99_factor": 1.5, "p99_slack": 0.05}
    return argparse.Namespace(**{**values, **overrides})


def figures(**overrides: float) -> dict[str, float]:
    values = {
        "canary_requests": 500.0,
        "canary_5xx_ratio": 0.0,
        "canary_p99_seconds": 0.02,
        "others_requests": 2000.0,
        "others_5xx_ratio": 0.0,
        "others_p99_seconds": 0.02,
    }
    return {**values, **overrides}


def test_a_healthy_canary_is_promoted():
    assert watch.judge(figures(), settings(), final=True) == []


def test_a_canary_with_more_5xx_than_the_others_is_rolled_back_at_once():
    assert watch.judge(figures(canary_5xx_ratio=0.2), settings(), final=False)


def test_5xx_are_compared_with_the_others():
    # Everyone fails alike (the database, say): not the release's fault.
    assert watch.judge(figures(canary_5xx_ratio=0.2, others_5xx_ratio=0.195), settings(), final=True) == []


def test_too_few_requests_cannot_be_judged_and_roll_back_at_the_end():
    assert watch.judge(figures(canary_requests=10, canary_5xx_ratio=1.0), settings(), final=False) == []
    assert watch.judge(figures(canary_requests=10), settings(), final=True)


def test_p99_counts_only_at_the_end_and_beyond_the_slack():
    slow = figures(canary_p99_seconds=0.5)
    assert watch.judge(slow, settings(), final=False) == []
    assert watch.judge(slow, settings(), final=True)
    # 3x a tiny latency is still within the 50 ms slack.
    assert watch.judge(figures(canary_p99_seconds=0.06), settings(), final=True) == []


def test_no_latency_yet_is_not_a_reason():
    assert watch.judge(figures(canary_p99_seconds=math.nan, others_p99_seconds=math.nan), settings(), final=True) == []


def test_the_others_regex_is_a_valid_promql_string():
    # re.escape("dp-aio:8002") is "dp\-aio:8002"; in a PromQL string "\-" is an invalid escape
    # (Prometheus answered 400 in the lab), so the backslash itself is escaped.
    assert watch.promql_regex(["dp-aio:8002", "dp-aio:8003"]) == "dp\\\\-aio:8002|dp\\\\-aio:8003"
