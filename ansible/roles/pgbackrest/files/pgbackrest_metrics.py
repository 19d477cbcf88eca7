#!/usr/bin/python3
"""Backup and WAL-archiving metrics of one pgBackRest stanza, in Prometheus' text format.

Run as postgres by pgbackrest-metrics.service (the pgbackrest role) on the database host:
`pgbackrest info --output=json` gives the backups in the repository (wherever it is), and
PostgreSQL's pg_stat_archiver and archive_status directory give what archive_command did and
what waits for it. Written to --output through a temporary file and a rename, so a reader never
sees half a file. Every metric is written even when a source fails (its *_up is then 0), so the
alerts see a value rather than a gap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BACKUP_TYPES = ("full", "diff", "incr")
ARCHIVER_SQL = """
SELECT archived_count, failed_count,
       coalesce(extract(epoch FROM last_archived_time), 0),
       coalesce(extract(epoch FROM last_failed_time), 0),
       (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'),
       (SELECT coalesce(extract(epoch FROM now() - min(modification)), 0)
          FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')
  FROM pg_stat_archiver
"""
HELP = {
    "pgbackrest_up": ("gauge", "1 if `pgbackrest info` answered for the stanza"),
    "pgbackrest_stanza_status": ("gauge", "status code of the stanza in `pgbackrest info` (0 ok, 2 no valid backup)"),
    "pgbackrest_backups": ("gauge", "backups of the type in the repository"),
    "pgbackrest_backup_last_success_timestamp_seconds": ("gauge", "end of the newest backup of the type (0: none)"),
    "pgbackrest_backup_last_duration_seconds": ("gauge", "duration of the newest backup of the type"),
    "pgbackrest_backup_last_size_bytes": ("gauge", "size of the database in the newest backup of the type"),
    "pgbackrest_backup_last_repo_bytes": ("gauge", "bytes the newest backup of the type added to the repository"),
    "pgbackrest_archive_up": ("gauge", "1 if PostgreSQL answered the archiver query"),
    "pgbackrest_archive_success_total": ("counter", "WAL segments archive_command archived (pg_stat_archiver)"),
    "pgbackrest_archive_failure_total": ("counter", "failed archive_command runs (pg_stat_archiver)"),
    "pgbackrest_archive_last_success_timestamp_seconds": ("gauge", "last WAL segment archived (0: none)"),
    "pgbackrest_archive_last_failure_timestamp_seconds": ("gauge", "last failed archive_command run (0: none)"),
    "pgbackrest_archive_pending_segments": ("gauge", "WAL segments complete but not archived yet"),
    "pgbackrest_archive_oldest_pending_age_seconds": ("gauge", "age of the oldest segment waiting for archiving"),
    "pgbackrest_metrics_timestamp_seconds": ("gauge", "when this file was written"),
}


def run(argv: list[str]) -> str | None:
    try:
        # argv is this script's own fixed command lines
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"{argv[0]}: {exc}", file=sys.stderr)
        return None
    if result.returncode != 0:
        print(f"{argv[0]} exited {result.returncode}: {result.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return result.stdout


def backup_samples(stanza: str) -> list[tuple[str, dict[str, str], float]]:
    labels = {"stanza": stanza}
    out = run(["pgbackrest", f"--stanza={stanza}", "--output=json", "--log-level-file=off", "info"])
    try:
        info = next(s for s in json.loads(out or "") if s.get("name") == stanza)
    except (ValueError, StopIteration):
        return [("pgbackrest_up", labels, 0)]
    samples = [("pgbackrest_up", labels, 1), ("pgbackrest_stanza_status", labels, info["status"]["code"])]
    for kind in BACKUP_TYPES:
        backups = [b for b in info.get("backup", []) if b.get("type") == kind]
        last = max(backups, key=lambda b: b["timestamp"]["stop"], default=None)
        typed = {**labels, "type": kind}
        samples.append(("pgbackrest_backups", typed, len(backups)))
        stop = last["timestamp"]["stop"] if last else 0
        samples.append(("pgbackrest_backup_last_success_timestamp_seconds", typed, stop))
        if last:
            samples.append(("pgbackrest_backup_last_duration_seconds", typed, stop - last["timestamp"]["start"]))
            samples.append(("pgbackrest_backup_last_size_bytes", typed, last["info"]["size"]))
            samples.append(("pgbackrest_backup_last_repo_bytes", typed, last["info"]["repository"]["delta"]))
    return samples


def archive_samples(stanza: str, port: int) -> list[tuple[str, dict[str, str], float]]:
    labels = {"stanza": stanza}
    out = run(["psql", "--no-psqlrc", "-X", "-At", "-F", " ", f"--port={port}", "-d", "postgres", "-c", ARCHIVER_SQL])
    fields = (out or "").split()
    if len(fields) != 6:
        return [("pgbackrest_archive_up", labels, 0)]
    names = (
        "pgbackrest_archive_success_total",
        "pgbackrest_archive_failure_total",
        "pgbackrest_archive_last_success_timestamp_seconds",
        "pgbackrest_archive_last_failure_timestamp_seconds",
        "pgbackrest_archive_pending_segments",
        "pgbackrest_archive_oldest_pending_age_seconds",
    )
    return [("pgbackrest_archive_up", labels, 1)] + [(n, labels, float(v)) for n, v in zip(names, fields, strict=True)]


def render(samples: list[tuple[str, dict[str, str], float]]) -> str:
    lines: list[str] = []
    for name, (kind, text) in HELP.items():
        rows = [(labels, value) for n, labels, value in samples if n == name]
        if not rows:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in rows:
            label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{label_text}}} {float(value)!r}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stanza", required=True)
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    samples = backup_samples(args.stanza) + archive_samples(args.stanza, args.port)
    samples.append(("pgbackrest_metrics_timestamp_seconds", {"stanza": args.stanza}, time.time()))
    directory = os.path.dirname(os.path.abspath(args.output))
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=".pgbackrest-", delete=False) as tmp:
        tmp.write(render(samples))
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
