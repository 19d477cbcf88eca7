"""Runs the chaos experiments one at a time under steady traffic and writes docs/chaos.md.

    python -m chaos.run --suite aio --inventory ansible/inventories/lab       (make chaos)
    python -m chaos.run --suite cluster --inventory ansible/inventories/lab-cluster

Per experiment: fresh links (hot ones warmed into the cache, cold ones never visited), traffic
at fixed rates, a warm-up, the Chaos Toolkit experiment (steady state, fault, heal, steady
state), an observation after the heal, then the figures (chaos.measure) and a timeline.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import requests
from chaoslib.experiment import run_experiment
from chaoslib.loader import load_experiment

from chaos import actions, report, sink
from chaos.lab import ROOT, Traffic, inventory_hosts
from chaos.measure import Row, fill

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"
KEY_FILE = ROOT / "ansible" / ".secrets" / "shortener_admin_api_key"
# Requests per second by kind. The admin key's limits leave room for these rates; anonymous
# requests are only redirects, which Nginx never limits.
RATES = {"hot": 20.0, "cold": 2.0, "create": 2.0, "read": 2.0}
HOT_LINKS = 10
WARMUP = 5.0
OBSERVE = 30.0
# How long an experiment may run from its fault to its end: the cold links it needs. One that
# waits for an alert holds its fault up to hold_until_alert's timeout (150 s).
LONGEST = {True: 150 + 90, False: 120}
# How far back the sink's messages are read to see whether a page is still unresolved: longer
# than any experiment, shorter than the gap between two runs of the suite.
PAGES_LOOKBACK = 1800


def links(base: str, headers: dict[str, str], tag: str, count: int) -> list[dict]:
    def make(n: int) -> dict:
        body = {"original_url": f"https://example.com/chaos/{tag}/link/{n}"}
        answer = requests.post(f"{base}/urls", json=body, headers=headers, timeout=30)
        answer.raise_for_status()
        return answer.json()

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(make, range(count)))


def warm(base: str, code: str) -> None:
    """HEAD fills the cache without a click."""
    with contextlib.suppress(requests.RequestException):
        requests.head(f"{base}/{code}", allow_redirects=False, timeout=10)


def epoch(stamp: str) -> float:
    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def fault_window(journal: dict) -> tuple[float, float]:
    """From the start of the first fault: activity to the end of the last heal: activity."""
    runs = journal.get("run", [])
    faults = [epoch(r["start"]) for r in runs if r["activity"]["name"].startswith("fault:")]
    heals = [epoch(r["end"]) for r in runs if r["activity"]["name"].startswith("heal:")]
    if not faults:
        raise RuntimeError(f"{journal['experiment']['title']}: no fault ran ({journal.get('status')})")
    return min(faults), max(heals) if heals else time.time()


def evidence(journal: dict) -> str:
    """The outputs of the "proof:" activities: what the host said about the fault."""
    return "; ".join(
        str(r.get("output") if r.get("status") == "succeeded" else f"proof failed: {r.get('exception', ['?'])[-1]}")
        for r in journal.get("run", [])
        if r["activity"]["name"].startswith("proof:")
    )


def extension(experiment: dict) -> dict:
    return next((e for e in experiment.get("extensions", []) if e.get("name") == "shortener"), {})


def commit() -> str:
    """The short commit the suite runs at, with "+" when the tree has uncommitted changes other
    than the suite's own output (which the run itself rewrites after each experiment)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    mine = [":(exclude)docs/chaos.md", ":(exclude)docs/chaos-*.md", ":(exclude)docs/img/chaos"]
    status = ["git", "status", "--porcelain", "--", ".", *mine]
    dirty = subprocess.run(status, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return head.stdout.strip() + ("+" if dirty else "")


def not_run(path: Path, experiment: dict, reason: str) -> Row:
    """The row of an experiment whose fault cannot be made on this host (its precondition)."""
    now = time.time()
    load = Path("/proc/loadavg").read_text().split()[0]
    return Row(
        path.stem, experiment["title"], "not run", now, now, now, now, not_run=reason, commit=commit(), load=load
    )


def run_one(path: Path, inventory: Path, headers: dict[str, str]) -> tuple[Row, list]:
    experiment = load_experiment(str(path))
    experiment["configuration"] = {"inventory": str(inventory)}
    config = experiment["configuration"]
    ext = extension(experiment)
    # A fault this host cannot make (the precondition names the reason) is reported as not
    # run: measured without its fault, the row would claim users saw nothing.
    check = ext.get("precondition")
    if check and (reason := getattr(actions, check["func"])(configuration=config, **check.get("arguments", {}))):
        print(f"--- {path.stem}: not run: {reason}", flush=True)
        return not_run(path, experiment, reason), []
    load = Path("/proc/loadavg").read_text().split()[0]
    base = actions.base_url(config)
    db = actions.host(config, "db")
    tag = f"{path.stem}-{uuid.uuid4().hex[:8]}"
    actions.wait_healthy(config)  # the previous experiment's aftermath is over
    # ... and the pages that would hold this one's back resolved (their group flushed).
    if ext.get("alert") and (
        still := sink.wait_pages_resolved(config, ext["alert"], since=time.time() - PAGES_LOOKBACK)
    ):
        print(f"    pages still firing before {path.stem}: {sorted(still)}", flush=True)
    hot = links(base, headers, tag + "-hot", HOT_LINKS)
    longest = LONGEST[bool(ext.get("alert"))]
    cold = links(base, headers, tag + "-cold", int(RATES["cold"] * (longest + WARMUP + OBSERVE)))
    for link in hot:
        warm(base, link["short_code"])
    traffic = Traffic(
        base=base,
        headers=headers,
        hot=[link["short_code"] for link in hot],
        read_ids=[link["id"] for link in hot],
        cold=[link["short_code"] for link in cold],
        rates=RATES,
        tag=tag,
    )
    print(f"--- {path.stem}: {experiment['title']}", flush=True)
    started = time.time()
    traffic.start()
    time.sleep(WARMUP)
    journal = run_experiment(experiment)
    time.sleep(OBSERVE)
    answers = traffic.stop()
    ended = time.time()
    for step in ext.get("cleanup", []):
        getattr(actions, step)(configuration=config)
    fault_at, heal_at = fault_window(journal)
    row = Row(
        name=path.stem,
        title=experiment["title"],
        status=journal.get("status", "?"),
        fault_at=fault_at,
        heal_at=heal_at,
        started_at=started,
        ended_at=ended,
        alert=ext.get("alert", ""),
        commit=commit(),
        load=load,
        evidence=evidence(journal),
    )
    fill(row, answers, db)
    if row.alert:
        received = sink.alert_received(row.alert, config, fault_at - 1)
        row.alert_after = None if received is None else received - fault_at
    report.timeline(row, answers)
    print(f"    {row}", flush=True)
    return row, answers


def header(inventory: Path, shared_by: int) -> str:
    hosts = ", ".join(f"{g}: {' '.join(a)}" for g, a in sorted(inventory_hosts(inventory).items()))
    return (
        f"Last run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {commit()} (each row names the commit it"
        f' ran at and the load average when it started; a "+": uncommitted changes),'
        f" inventory `{inventory.relative_to(ROOT)}` ({hosts}); "
        f"machine: {os.cpu_count()} cores shared by {shared_by} workers, load average before the run "
        f"{Path('/proc/loadavg').read_text().split()[0]} (`uptime`). Traffic per second: "
        + ", ".join(f"{kind} {rate:g}" for kind, rate in RATES.items())
        + "."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="aio", choices=sorted(p.name for p in EXPERIMENTS.iterdir() if p.is_dir()))
    parser.add_argument("--inventory", type=Path, default=ROOT / "ansible" / "inventories" / "lab")
    parser.add_argument("--only", nargs="*", help="experiment names (file stems) to run")
    parser.add_argument("--shared-by", type=int, default=5, help="workers sharing the machine (for the header)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the suite's report from the saved results")
    args = parser.parse_args(argv)
    inventory = args.inventory.resolve()
    if args.report_only:
        report.write(report.load(args.suite), header(inventory, args.shared_by), args.suite)
        return 0
    key = os.environ.get("SHORTENER_API_KEY") or KEY_FILE.read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
    head = header(inventory, args.shared_by)
    kept = report.load(args.suite) if args.only is not None and report.results_path(args.suite).exists() else []
    rows = [r for r in kept if r.name not in (args.only or [])]
    for path in sorted((EXPERIMENTS / args.suite).glob("*.yaml")):
        if args.only is None or path.stem in args.only:
            try:
                rows.append(run_one(path, inventory, headers)[0])
            except (RuntimeError, requests.RequestException) as error:
                print(f"    {path.stem} did not run: {error}", file=sys.stderr, flush=True)
                continue
            report.save(sorted(rows, key=lambda r: r.name), args.suite)
            report.write(sorted(rows, key=lambda r: r.name), head, args.suite)
    print(report.write(sorted(rows, key=lambda r: r.name), head, args.suite))
    bad = [r.name for r in rows if r.creates_lost or r.clicks_lost]
    if bad:
        print(f"acknowledged creates or clicks lost in: {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
