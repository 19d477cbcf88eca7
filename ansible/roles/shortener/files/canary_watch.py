#!/usr/bin/python3
"""Watches a canary instance in Prometheus and says whether to promote it or roll it back.

Run on a host that reaches Prometheus (the role's tasks/canary.yml runs it on the monitoring
host, with Python's standard library only). Every poll compares, over the time since the watch
began, the canary's 5xx ratio and p99 latency with those of the other instances (the
`instance` label, "HOST:PORT"). It stops early, with "rollback", as soon as the canary has
answered enough requests and its 5xx ratio is over the limit; otherwise it decides at the end
of the watch. Prints one JSON object: verdict (promote or rollback), reasons, figures.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request

# /health and /metrics are the probes' and Prometheus' own requests, not users'.
USER_REQUESTS = 'job="shortener", endpoint!~"/health|/metrics"'


def query(base_url: str, promql: str) -> float:
    """One instant query; NaN when the result is empty (no such series yet)."""
    url = f"{base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the URL is ours
        body = json.load(answer)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus: {body}")
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else math.nan


def promql_regex(names: list[str]) -> str:
    """A regex matching exactly these names, escaped for a PromQL string literal (whose own
    escapes are Go's: re.escape's backslashes must be doubled, or Prometheus answers 400)."""
    return "|".join(re.escape(name) for name in names).replace("\\", "\\\\")


def figures(base_url: str, canary: str, others: list[str], window: int) -> dict[str, float]:
    """Requests, 5xx ratio and p99 of the canary and of the other instances over the window."""
    selectors = {
        "canary": f'instance="{canary}"',
        "others": f'instance=~"{promql_regex(others)}"',
    }
    out: dict[str, float] = {}
    for who, selector in selectors.items():
        requests = f"{USER_REQUESTS}, {selector}"
        total = query(base_url, f"sum(increase(shortener_http_requests_total{{{requests}}}[{window}s]))")
        errors = query(
            base_url,
            f'sum(increase(shortener_http_requests_total{{{requests}, status=~"5.."}}[{window}s])) or vector(0)',
        )
        p99 = query(
            base_url,
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(shortener_http_request_duration_seconds_bucket{{{requests}}}[{window}s])))",
        )
        out[f"{who}_requests"] = 0.0 if math.isnan(total) else total
        out[f"{who}_5xx"] = 0.0 if math.isnan(errors) else errors
        out[f"{who}_5xx_ratio"] = out[f"{who}_5xx"] / total if total and not math.isnan(total) else 0.0
        out[f"{who}_p99_seconds"] = p99
    return out


def judge(f: dict[str, float], args: argparse.Namespace, final: bool) -> list[str]:
    """Reasons to roll back (empty: nothing against the canary so far)."""
    reasons = []
    enough = f["canary_requests"] >= args.min_requests
    ratio_limit = f["others_5xx_ratio"] + args.max_5xx_ratio
    if enough and f["canary_5xx_ratio"] > ratio_limit:
        reasons.append(
            f"5xx ratio {f['canary_5xx_ratio']:.4f} over {ratio_limit:.4f} "
            f"(the other instances' {f['others_5xx_ratio']:.4f} + {args.max_5xx_ratio})"
        )
    if not final:
        return reasons
    if not enough:
        reasons.append(f"only {f['canary_requests']:.0f} requests, fewer than {args.min_requests}: cannot judge")
    p99_limit = max(f["others_p99_seconds"] * args.max_p99_factor, f["others_p99_seconds"] + args.p99_slack)
    if enough and not math.isnan(p99_limit) and f["canary_p99_seconds"] > p99_limit:
        reasons.append(f"p99 {f['canary_p99_seconds']:.3f} s over {p99_limit:.3f} s")
    return reasons


def no_nan(value: object) -> object:
    """NaN (no data, e.g. no latency yet) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: no_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [no_nan(item) for item in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--canary", required=True, help="instance label of the canary (HOST:PORT)")
    parser.add_argument("--others", required=True, help="instance labels of the others, comma-separated")
    parser.add_argument("--watch-seconds", type=int, required=True)
    parser.add_argument("--poll-seconds", type=int, required=True)
    parser.add_argument("--min-requests", type=int, required=True)
    parser.add_argument("--max-5xx-ratio", type=float, required=True)
    parser.add_argument("--max-p99-factor", type=float, required=True)
    parser.add_argument("--p99-slack", type=float, required=True)
    args = parser.parse_args()
    others = [name for name in args.others.split(",") if name]
    start = time.monotonic()
    polls = []
    while True:
        time.sleep(args.poll_seconds)
        elapsed = int(time.monotonic() - start)
        final = elapsed >= args.watch_seconds
        # Prometheus needs two samples of a series in the window for increase(): at least two
        # scrape intervals, whatever the elapsed time.
        try:
            current = figures(args.prometheus, args.canary, others, max(elapsed, 30))
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            # No figures, no judgement: a canary nobody could watch is not promoted.
            current, reasons = {}, [f"Prometheus could not be asked: {error}"]
            break
        reasons = judge(current, args, final)
        polls.append({"elapsed_seconds": elapsed, **current})
        if reasons or final:
            break
    verdict = "rollback" if reasons else "promote"
    report = {"verdict": verdict, "reasons": reasons, "elapsed_seconds": elapsed, "figures": current, "polls": polls}
    print(json.dumps(no_nan(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
