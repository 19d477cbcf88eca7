"""How fast the click worker empties the stream: clicks written per second (docs/analytics.md).

    .venv/bin/python -m tests.bench_ingest --clicks 20000 --workers 1 --threads 2

Uses the dev stack of the service tests (the SHORTENER_TEST_* ports; it starts it if needed),
empties its database, queues ``--clicks`` clicks over ``--links`` links (100; 1 is
``make bench``'s hot phase: every batch updates the same rollup rows) with 40 user agents (real
traffic repeats a few) and 5,000 addresses, then times ``--workers`` worker processes until the
stream is empty and every click is in ``events``. Besides the rate it prints the CPU time the
work took, per 1,000 clicks: the worker processes, PostgreSQL (the postmaster and every backend),
PgBouncer and Redis. On a machine shared with other work the rate follows the load; the CPU per
click does much less. Not a test: a measurement to repeat.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import threading
import time

import psycopg2
import redis as redis_lib

from app import clickworker
from app.db import Database
from devstack import DevStack
from tests.conftest import make_settings, truncate

AGENTS = (
    [
        f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0 Safari/537.36"
        for v in range(100, 120)
    ]
    + [
        f"Mozilla/5.0 (iPhone; CPU iPhone OS {v}_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile"
        for v in range(10, 29)
    ]
    + ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"]
)


def _work(name: str, stack_urls: tuple[str, str], ready, cpu) -> None:
    try:  # as the worker's main() does before its loop (absent before the analytics)
        from app import clickparse

        clickparse.warm_up()
    except ImportError:
        pass
    ready.wait()
    started = time.process_time()  # every thread of this process, from here on
    settings = make_settings_from(stack_urls)
    db = Database(settings.database_url, max(4, settings.clickworker_threads + 1), 10, settings.db_connect_options)
    client = redis_lib.Redis.from_url(settings.redis_url, decode_responses=True)
    threads = []
    for i in range(getattr(settings, "clickworker_threads", 1)):
        worker = clickworker.ClickWorker(settings, db, client, f"{name}-{i}")
        threads.append(threading.Thread(target=_drain, args=(worker,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    db.close()
    with cpu.get_lock():
        cpu.value += time.process_time() - started


def _drain(worker: clickworker.ClickWorker) -> None:
    while worker.step():
        pass


def _ticks(pid: int) -> int:
    """utime + stime of a process and of its children it has waited for, in clock ticks."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15])


def _daemon_cpu(stack: DevStack) -> dict[str, float]:
    """CPU seconds so far of PostgreSQL (postmaster, backends, exited ones), PgBouncer and Redis."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = {d.name: d.pid() for d in stack.daemons}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rpartition(")")[2].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    cpu = {}
    for name, pid in pids.items():
        tree, total = [pid], 0
        while tree:
            current = tree.pop()
            try:
                total += _ticks(current)
            except OSError:
                continue
            tree.extend(children.get(current, []))
        cpu[name] = total / tick
    return cpu


def make_settings_from(urls: tuple[str, str]):
    class _Stack:
        database_url, redis_url = urls

    threads = int(os.environ.get("BENCH_THREADS", "1"))  # absent before the analytics: 1
    overrides = {"clickworker_block_ms": 50, "clickworker_threads": threads}
    if os.environ.get("BENCH_BATCH"):  # else the code's own default
        overrides["clickworker_batch_size"] = int(os.environ["BENCH_BATCH"])
    return make_settings(_Stack(), **overrides)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clicks", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=1, help="processes")
    parser.add_argument("--threads", type=int, default=1, help="consumers (threads) per process")
    parser.add_argument("--links", type=int, default=100, help="links the clicks are spread over")
    parser.add_argument("--batch", type=int, default=0, help="clicks per batch (default: the code's default)")
    args = parser.parse_args()
    os.environ["BENCH_THREADS"] = str(args.threads)
    if args.batch:
        os.environ["BENCH_BATCH"] = str(args.batch)
    stack = DevStack()
    stack.start()
    from app import create_app

    create_app(make_settings(stack)).extensions["shortener"].db.close()  # migrations
    truncate(stack)
    stack.flush_redis()
    conn = psycopg2.connect(stack.direct_database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO urls (short_code, original_url) SELECT 'b' || g, 'https://example.com/' || g"
            " FROM generate_series(1, %s) g",
            (args.links,),
        )
    settings = make_settings(stack)
    client = redis_lib.Redis.from_url(stack.redis_url, decode_responses=True)
    clickworker.ClickWorker(settings, None, client, "setup").ensure_group()  # type: ignore[arg-type]
    rng = random.Random(7)
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    pipe = client.pipeline(transaction=False)
    for i in range(args.clicks):
        link = rng.randint(1, args.links)
        fields = {"c": f"{i:024x}", "u": str(link), "o": "", "t": now, "r": "https://news.example/x"}
        fields |= {"a": rng.choice(AGENTS), "s": f"b{link}", "q": "", "i": f"10.0.{rng.randint(0, 19)}.{i % 250}"}
        pipe.xadd(settings.click_stream, fields)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    ready = multiprocessing.Barrier(args.workers + 1)
    worker_cpu = multiprocessing.Value("d", 0.0)
    procs = [
        multiprocessing.Process(
            target=_work, args=(f"bench-{n}", (stack.database_url, stack.redis_url), ready, worker_cpu)
        )
        for n in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    ready.wait()  # every worker started and warmed up
    daemons_before = _daemon_cpu(stack)
    started = time.perf_counter()
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started
    daemons_after = _daemon_cpu(stack)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM events WHERE event_type = 'click'")
        written = cur.fetchone()[0]
    batch = make_settings_from((stack.database_url, stack.redis_url)).clickworker_batch_size
    print(
        f"{written} of {args.clicks} clicks over {args.links} link(s) written by {args.workers} process(es)"
        f" x {args.threads} thread(s),"
        f" batches of {batch}, in {elapsed:.2f} s: {written / elapsed:.0f} clicks/s;"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    cpu = {name: daemons_after[name] - daemons_before[name] for name in daemons_after}
    cpu["worker"] = worker_cpu.value
    print(
        "CPU ms per 1,000 clicks: "
        + ", ".join(f"{name} {seconds * 1e6 / max(written, 1):.0f}" for name, seconds in cpu.items())
        + f", all {sum(cpu.values()) * 1e6 / max(written, 1):.0f}"
    )


if __name__ == "__main__":
    main()
