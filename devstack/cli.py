"""``python -m devstack up|down|env|status|reset``: the dev stack from the shell (``make dev``, ``make seed``).

    eval "$(python -m devstack up)"   # install if missing, start, print exports
    python -m devstack env            # print the exports again
    python -m devstack status         # exit 0 only when every daemon answers
    python -m devstack reset          # empty the database and Redis
    python -m devstack down           # stop them all

The servers are started daemonised, so they outlive this command until ``down``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from devstack.packages import ensure_packages
from devstack.process import StackError, log
from devstack.stack import DevStack


def _up(stack: DevStack) -> None:
    started = time.monotonic()
    installed = ensure_packages()
    if installed:
        log(f"installed {' '.join(installed)} in {time.monotonic() - started:.1f}s")
    stack.start()
    ports = ", ".join(f"{daemon.label} :{daemon.port}" for daemon in stack.daemons)
    log(f"up in {time.monotonic() - started:.2f}s: {ports} (state in {stack.base_dir})")
    sys.stdout.write(stack.export_lines())


def _status(stack: DevStack) -> int:
    state = stack.status()
    for name, info in state.items():
        pid = info["pid"] if info["pid"] is not None else "-"
        answers = "answers" if info["answers"] else "DOWN"
        print(f"{name:<10} port {info['port']:<6} pid {pid!s:<8} {answers}")
    return 0 if all(info["answers"] for info in state.values()) else 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="Private PostgreSQL + PgBouncer + Redis for tests and `make dev`.",
    )
    parser.add_argument(
        "command",
        choices=("up", "down", "env", "status", "reset"),
        help="up: install if missing, start, print exports; down: stop; "
        "env: print exports; status: show and exit 0 if all answer; reset: empty DB and Redis",
    )
    args = parser.parse_args(argv)
    stack = DevStack()
    try:
        if args.command == "up":
            _up(stack)
        elif args.command == "down":
            if stack.secrets_file.exists() or stack.base_dir.exists():
                stack.stop()
            log("down")
        elif args.command == "env":
            sys.stdout.write(stack.export_lines())
        elif args.command == "reset":
            stack.reset_database()
            stack.flush_redis()
            log("database and Redis emptied")
        else:
            return _status(stack)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.close()
    return 0
