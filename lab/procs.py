"""Running commands and finding processes by their command line."""

from __future__ import annotations

# The tool runs fixed system commands found on PATH as root, with arguments it builds itself:
# no shell, no outside input.
# ruff: noqa: S603
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lab.defaults import LabError


def log(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], *, check: bool = True, quiet: bool = False, **kw: Any) -> int:
    if quiet:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.run(list(cmd), check=False, **kw)
    if check and proc.returncode != 0:
        raise LabError(f"command failed ({proc.returncode}): {shlex.join(cmd)}")
    return proc.returncode


def read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pids_matching(pred: Callable[[list[str]], bool]) -> list[int]:
    me = os.getpid()
    return [pid for pid in all_pids() if pid != me and pred(read_cmdline(pid))]
