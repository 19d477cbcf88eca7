"""Statistics at scale (issue 12): generated clicks on the lab host, then the statistics API timed.

    python -m loadtests.bench_stats                       # make bench-stats: make up's lab host
    python -m loadtests.bench_stats --target http://10.213.0.131 --requests 200

1. **Data**, on the host, as the schema's owner (SHORTENER_MIGRATE_DATABASE_URL from the
   service's environment files, psql over SSH): a user ``bench-stats`` owning ``--links``
   links (short codes ``bs-1`` .. ``bs-N``, rank = popularity), then for each of the ``--days``
   UTC days before today one transaction that generates the day's raw clicks with
   ``generate_series`` straight into the partitioned ``clicks`` table and updates the rollups
   from exactly the rows it inserted, with the click worker's own SQL (``sql.CLICK_ROLLUPS``,
   the text ``sql.WRITE_CLICKS`` uses: one definition, no drift). Popularity is Zipf-like: link
   rank r gets a share proportional to r^-s (``--zipf``, default 1). Every field comes from a
   hash of the click id, so the data is the same on every run and a repeated day inserts
   nothing (``ON CONFLICT DO NOTHING``, as a redelivered click); days already there are
   skipped. No events rows are written: the statistics never read them. ``--sessions`` (2)
   psql sessions generate alternate days side by side.
2. **Measurement**: real HTTP requests through Nginx with the admin key, one keep-alive
   connection, ``--warmup`` unmeasured then ``--requests`` measured per endpoint: the hottest
   link's stats over the whole range per day and per hour, and ``/stats/top`` over the range.
   p50/p95/p99/max against the targets (stats p95 < 100 ms, top p95 < 250 ms), and the
   answer's total checked against the database. A target missed: EXPLAIN ANALYZE of the
   endpoint's queries, run as the service would, printed for the report; exit status 1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from app import spans, sql, sql_stats
from labkit.hosts import DEFAULT_TARGET
from labkit.ssh import ssh_argv
from loadtests import apikey, labssh

USER_EMAIL = "bench-stats@example.com"
CODE_PREFIX = "bs-"
TARGETS_MS = {"stats_day": 100.0, "stats_hour": 100.0, "top": 250.0}
# The owner's URL (the migrations' role) from the service's environment files, for psql.
OWNER_PSQL = labssh.with_app_env(
    'psql "$SHORTENER_MIGRATE_DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 -f -', migrate=True
)

# What the generated clicks look like (weights by repetition): a few big values and a tail.
BROWSERS = ["Chrome"] * 7 + ["Safari"] * 4 + ["Firefox"] * 2 + ["Edge"] * 2 + ["Samsung Internet", "Opera"]
SYSTEMS = (
    [("Windows", "desktop")] * 5
    + [("Android", "mobile")] * 5
    + [("iOS", "mobile")] * 3
    + [("iOS", "tablet"), ("Mac OS X", "desktop"), ("Mac OS X", "desktop"), ("Linux", "desktop")]
    + [("Chrome OS", "desktop"), ("Other", "other")]
)
BOTS = ["Googlebot", "bingbot", "curl", "python-requests"]
REFERRERS = (
    ["(none)"] * 10
    + ["google.com"] * 6
    + ["t.co"] * 3
    + ["facebook.com"] * 2
    + ["news.ycombinator.com", "reddit.com", "linkedin.com", "duckduckgo.com"]
)
REFERRER_TAIL = 300  # blogN.example: the long tail of referring sites
BOT_PER_1024 = 100  # about 10 % bots
# Two -c: psql runs one -c's statements in one transaction, where VACUUM may not run.
VACUUM = "-c 'VACUUM (ANALYZE) click_hourly, click_daily, click_dims, click_spans' -c 'ANALYZE clicks'"


def _array(values: Iterable[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "'{" + ",".join(str(v) for v in value) + "}'"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def harmonic(links: int, s: float) -> float:
    return sum(r**-s for r in range(1, links + 1))


def setup_sql(links: int) -> str:
    """The bench user and its links (kept if there), through the normal schema."""
    return f"""
INSERT INTO users (username, email) SELECT 'bench-stats', '{USER_EMAIL}'
WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(email) = '{USER_EMAIL}');
INSERT INTO urls (user_id, short_code, original_url, title)
SELECT u.id, '{CODE_PREFIX}' || g, 'https://example.com/bench-stats/' || g, 'bench-stats link ' || g
FROM users u CROSS JOIN generate_series(1, {links}) AS g WHERE lower(u.email) = '{USER_EMAIL}'
ON CONFLICT (short_code) DO NOTHING;
SELECT id FROM urls WHERE short_code = '{CODE_PREFIX}1';
"""


def day_sql(day: date, links: int, clicks: int, days: int, s: float) -> str:
    """One day's clicks and their rollups in one statement; returns (day, clicks inserted)."""
    per_day = clicks / days / harmonic(links, s)
    systems = [os for os, _ in SYSTEMS], [device for _, device in SYSTEMS]
    tag = day.strftime("%Y%m%d")
    # u32(x): a hash of the text x as a number in [0, 2^32): the click's "random" draws.
    a, b, c = (f"(hashtext(g.click_id || '{salt}')::bigint + 2147483648)" for salt in ("a", "b", "c"))
    return f"""
WITH links AS (
    SELECT u.id AS url_id, r.rank,
           floor({per_day} * power(r.rank, -{s}::float8)
                 + (hashtext('n{tag}/' || r.rank)::bigint + 2147483648) / 4294967296.0)::int AS n
    FROM generate_series(1, {links}) AS r(rank) JOIN urls u ON u.short_code = '{CODE_PREFIX}' || r.rank
), g AS (
    SELECT l.url_id, l.rank, l.n, 'bs{tag}-' || l.rank || '-' || i AS click_id
    FROM links l CROSS JOIN LATERAL generate_series(1, l.n) AS i
), d AS (
    SELECT g.url_id, g.click_id, g.rank, g.n, {a} AS a, {b} AS b, {c} AS c FROM g
), raw AS (
    INSERT INTO clicks (ts, click_id, url_id, visitor, is_bot, browser, os, device, referrer_domain)
    SELECT '{day.isoformat()}'::timestamp + make_interval(secs => d.b % 86400), d.click_id, d.url_id,
           md5(d.rank || '/{tag}/' || (d.a / 1024) % greatest(1, d.n / 2)),
           d.a % 1024 < {BOT_PER_1024},
           CASE WHEN d.a % 1024 < {BOT_PER_1024} THEN ({_array(BOTS)})[1 + d.c % {len(BOTS)}]
                ELSE ({_array(BROWSERS)})[1 + d.c % {len(BROWSERS)}] END,
           CASE WHEN d.a % 1024 < {BOT_PER_1024} THEN 'Other'
                ELSE ({_array(systems[0])})[1 + (d.c / 64) % {len(SYSTEMS)}] END,
           CASE WHEN d.a % 1024 < {BOT_PER_1024} THEN 'bot'
                ELSE ({_array(systems[1])})[1 + (d.c / 64) % {len(SYSTEMS)}] END,
           CASE WHEN (d.b / 86400) % 40 < {len(REFERRERS)}
                THEN ({_array(REFERRERS)})[1 + (d.b / 86400) % 40]
                ELSE 'blog' || (d.b / 3456000) % {REFERRER_TAIL} || '.example' END
    FROM d
    ON CONFLICT (ts, click_id) DO NOTHING
    RETURNING {sql.RAW_RETURNING}
), {sql.CLICK_ROLLUPS}
SELECT '{day.isoformat()}' AS day, (SELECT count(*) FROM raw) AS clicks
"""


def days_of(end: date, days: int) -> list[date]:
    return [end - timedelta(days=days - i) for i in range(days)]


# The worker's maintenance forgets the visitor lists of days before yesterday (sql.PRUNE_VISITORS);
# here only the generated day's, so that sessions working side by side never delete the same rows.
PRUNE_DAY = f"DELETE FROM click_visitors WHERE day = '{{day}}' AND day < {sql.NOW}::date - 1"


def generate_script(days: list[date], args: argparse.Namespace) -> str:
    """psql input: per day one transaction (partition, clicks + rollups, then the day's visitor
    list forgotten as the worker's maintenance would). work_mem large enough for the day's sorts
    and aggregates to stay in memory (the server's default spills them to disk)."""
    parts = []
    for day in days:
        parts.append(
            "BEGIN;\nSET LOCAL statement_timeout = 0;\nSET LOCAL work_mem = '128MB';\n"
            f"SELECT 'partition ' || clicks_partition('{day.isoformat()}');\n"
            + day_sql(day, args.links, args.clicks, args.days, args.zipf).strip()
            + ";\n"
            + PRUNE_DAY.format(day=day.isoformat())
            + ";\nCOMMIT;\n"
        )
    return "".join(parts)


def owner_psql(host: str, script: str, timeout: float = 600) -> list[str]:
    """Runs psql input as the schema's owner on the host; prints and returns its output lines."""
    proc = subprocess.Popen(
        ssh_argv(host, OWNER_PSQL), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdin and proc.stdout and proc.stderr
    proc.stdin.write(script)
    proc.stdin.close()
    lines = []
    started = time.monotonic()
    deadline = started + timeout
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        print(f"    [{time.monotonic() - started:7.1f} s] {lines[-1]}", flush=True)
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("psql on the host took longer than its timeout")
    if proc.wait() != 0:
        raise RuntimeError(f"psql on the host exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
    return lines


def generate(host: str, args: argparse.Namespace, end: date) -> dict[str, object]:
    """The bench's links and clicks (days already there skipped); what was done and how long."""
    started = time.monotonic()
    hot_id = int(owner_psql(host, setup_sql(args.links))[-1])
    day_list = days_of(end, args.days)
    have = labssh.psql(
        host, f"SELECT day FROM click_daily WHERE url_id = {hot_id} AND day >= '{day_list[0]}' AND day < '{end}'"
    ).split()
    todo = [d for d in day_list if d.isoformat() not in have]
    print(f"--- generating {len(todo)} of {len(day_list)} days ({len(have)} already there)", flush=True)
    if todo:
        # Days side by side in --sessions psql sessions: their rows differ in every key but the
        # spans' (runs of days several days share), where one upsert waits for the other's
        # commit, both in key order, so without deadlock; and a month's new partition, which the
        # second session's clicks_partition waits for.
        with ThreadPoolExecutor(args.sessions) as pool:
            scripts = [generate_script(todo[i :: args.sessions], args) for i in range(args.sessions)]
            list(pool.map(lambda script: owner_psql(host, script, args.generate_timeout), scripts))
        # Autovacuum gets there too, later; the measurement should not depend on when. As the
        # superuser: the owner's role carries the service's statement timeout.
        labssh.ssh(host, f"runuser -u postgres -- psql -d shortener -XqAt {VACUUM}", timeout=args.generate_timeout)
    return {"hot_id": hot_id, "days_generated": len(todo), "generate_seconds": round(time.monotonic() - started, 1)}


def data_size(host: str, hot_id: int, start: date, end: date) -> dict[str, object]:
    bench = f"u.short_code LIKE '{CODE_PREFIX}%' AND d.day >= '{start}' AND d.day < '{end}'"
    partitions = "SELECT relid FROM pg_partition_tree('clicks')"
    q = f"""SELECT json_build_object(
      'bench_clicks', (SELECT sum(d.clicks) FROM click_daily d JOIN urls u ON u.id = d.url_id WHERE {bench}),
      'hot_clicks', (SELECT sum(d.clicks) FROM click_daily d JOIN urls u ON u.id = d.url_id
                     WHERE {bench} AND u.id = {hot_id}),
      'clicks_rows', (SELECT sum(reltuples)::bigint FROM pg_class WHERE oid IN ({partitions} WHERE isleaf)),
      'clicks_size', pg_size_pretty((SELECT sum(pg_total_relation_size(relid)) FROM ({partitions}) p)),
      'click_hourly_size', pg_size_pretty(pg_total_relation_size('click_hourly')),
      'click_daily_size', pg_size_pretty(pg_total_relation_size('click_daily')),
      'click_dims_size', pg_size_pretty(pg_total_relation_size('click_dims')),
      'click_spans_size', pg_size_pretty(pg_total_relation_size('click_spans')),
      'rollup_rows', (SELECT json_object_agg(relname, reltuples::bigint) FROM pg_class
                      WHERE relname IN ('click_hourly', 'click_daily', 'click_dims', 'click_spans')),
      'database_size', pg_size_pretty(pg_database_size(current_database())))"""
    return json.loads(labssh.psql(host, " ".join(q.split())))


def timed_gets(conn: http.client.HTTPConnection, path: str, key: str, warmup: int, n: int) -> tuple[list[float], dict]:
    """``warmup`` then ``n`` GETs on one keep-alive connection: the n latencies (ms), last answer."""
    latencies: list[float] = []
    body: dict = {}
    for i in range(warmup + n):
        started = time.perf_counter()
        conn.request("GET", path, headers=apikey.headers(key))
        resp = conn.getresponse()
        raw = resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status != 200:
            raise RuntimeError(f"GET {path} answered {resp.status}: {raw[:300]!r}")
        if i >= warmup:
            latencies.append(elapsed)
        body = json.loads(raw)
    return latencies, body


def summary(latencies: list[float], target: float) -> dict[str, float | bool]:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "p50": round(q[49], 1),
        "p95": round(q[94], 1),
        "p99": round(q[98], 1),
        "max": round(max(latencies), 1),
        "target_p95": target,
        "pass": q[94] < target,
    }


def paths(hot_id: int, start: date, end: date) -> dict[str, str]:
    span = f"from={start.isoformat()}&to={end.isoformat()}"
    return {
        "stats_day": f"/urls/{hot_id}/stats?{span}&granularity=day",
        "stats_hour": f"/urls/{hot_id}/stats?{span}&granularity=hour",
        "top": f"/stats/top?{span}",
    }


def explain(host: str, name: str, hot_id: int, start: date, end: date) -> str:
    """EXPLAIN ANALYZE of the queries behind an endpoint, with the endpoint's parameters."""
    days, runs = spans.cover(start, end)
    params: dict[str, object] = {"url_id": hot_id, "start": f"{start} 00:00:00", "end": f"{end} 00:00:00"}
    params |= {"day_end": f"{end} 00:00:00", "owner_id": None, "limit": 10, "days": [str(d) for d in days]}
    params |= {"span_days": [n for n, _ in runs], "span_starts": [str(first) for _, first in runs]}
    series = sql_stats.STATS_SERIES_HOUR if name == "stats_hour" else sql_stats.STATS_SERIES_DAY
    queries = [sql_stats.STATS_TOP] if name == "top" else [series, sql_stats.STATS_DIMENSIONS]
    out = []
    for query in queries:
        text = query % {k: _literal(v) for k, v in params.items()}
        # As the API sends it: STATS_TOP after its settings, in one transaction (one -c string).
        settings = sql_stats.STATS_TOP_SETTINGS + "; " if query is sql_stats.STATS_TOP else ""
        out.append(labssh.psql(host, settings + "EXPLAIN (ANALYZE, BUFFERS) " + " ".join(text.split())))
    return "\n\n".join(out)


def measure(args: argparse.Namespace, host: str, hot_id: int, start: date, end: date) -> dict[str, dict]:
    target = urlparse(args.target)
    conn = http.client.HTTPConnection(target.hostname or "", target.port or 80, timeout=60)
    results: dict[str, dict] = {}
    try:
        for name, path in paths(hot_id, start, end).items():
            latencies, body = timed_gets(conn, path, args.api_key, args.warmup, args.requests)
            results[name] = {"path": path, **summary(latencies, TARGETS_MS[name])}
            if name != "top":
                results[name]["total_clicks"] = body["total_clicks"]
            else:
                results[name]["first"] = body["links"][0] if body["links"] else None
            print(f"    {name}: {results[name]}", flush=True)
    finally:
        conn.close()
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--lab-host", default=None, help="SSH address of the host (default: the target's)")
    parser.add_argument("--clicks", type=int, default=10_000_000, help="clicks in all (expected; per day rounded)")
    parser.add_argument("--links", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90, help="UTC days before today that get clicks")
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity of rank r proportional to r^-zipf")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per endpoint")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured requests per endpoint first")
    parser.add_argument("--generate-timeout", type=float, default=7200)
    parser.add_argument("--sessions", type=int, default=2, help="psql sessions generating days side by side")
    parser.add_argument("--skip-generate", action="store_true", help="measure the data already there")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    apikey.add_argument(parser)
    args = parser.parse_args(argv)
    args.api_key = apikey.resolve(args.api_key)
    return args


def check_totals(results: dict[str, dict], data: dict[str, object]) -> list[str]:
    """The API's total for the hot link against the rollups in the database."""
    problems = []
    for name in ("stats_day", "stats_hour"):
        if results[name]["total_clicks"] != data["hot_clicks"]:
            problems.append(f"{name}: total_clicks {results[name]['total_clicks']} vs {data['hot_clicks']} stored")
    return problems


def print_table(results: dict[str, dict]) -> None:
    print("\n| endpoint | p50 ms | p95 ms | p99 ms | max ms | target p95 | |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in results.values():
        figures = f"{r['p50']} | {r['p95']} | {r['p99']} | {r['max']}"
        print(f"| `{r['path']}` | {figures} | < {r['target_p95']:.0f} | {'pass' if r['pass'] else 'FAIL'} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host = args.lab_host or urlparse(args.target).hostname or ""
    end = datetime.now(UTC).date()
    start = end - timedelta(days=args.days)
    facts = labssh.machine_facts(host)
    print(f"bench-stats against {args.target}, {start} .. {end} (exclusive); machine: {facts}", flush=True)
    if args.skip_generate:
        done = {"hot_id": int(labssh.psql(host, f"SELECT id FROM urls WHERE short_code = '{CODE_PREFIX}1'"))}
    else:
        done = generate(host, args, end)
    hot_id = int(str(done["hot_id"]))
    data = data_size(host, hot_id, start, end)
    print(f"--- data: {data}", flush=True)
    print(f"--- {args.requests} requests per endpoint after {args.warmup} unmeasured, one connection", flush=True)
    results = measure(args, host, hot_id, start, end)
    problems = check_totals(results, data)
    print_table(results)
    print(f"\nmachine: {facts}; load average now {labssh.loadavg1():.2f}")
    plans = {name: explain(host, name, hot_id, start, end) for name, r in results.items() if not r["pass"]}
    for name, plan in plans.items():
        print(f"\n--- EXPLAIN ANALYZE behind {name} (missed its target)\n{plan}")
    for line in problems:
        print(f"CHECK FAILED {line}")
    if args.json:
        report = {"facts": facts, "generated": done, "data": data, "results": results, "plans": plans}
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 1 if plans or problems else 0


if __name__ == "__main__":
    sys.exit(main())
