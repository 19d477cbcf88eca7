"""An instance's memory limit set from the machine's side: 13-oom-instance on the lab.

The lab's hosts are systemd-nspawn containers on a machine with cgroup v1: inside a host the
memory controller is mounted read-only, so systemd's `MemoryMax=` is accepted and never
applied there. The machine's own memory hierarchy (/sys/fs/cgroup/memory) is writable, and the
chaos runner runs on the machine as root. So the fault makes a child memory cgroup under the
one the instance's processes are in (nested: whatever limits the parent has still hold), moves
the instance's Gunicorn master and workers into it, lowers its limit and has the master start
its workers again (SIGHUP), so that they start under the limit: a limit set on a running
process counts only what it allocates from then on (cgroup v1 leaves the charges made before
the move with the old cgroup). The kernel's OOM killer then kills the workers, the master
forks new ones into the same cgroup, and they are killed in turn. The kernel kills the
process with the largest footprint, and a fresh worker's is below the master's (tried: the
master was the second victim, systemd restarted the unit outside the cgroup and the fault
ended). Shielding the master (a negative oom_score_adj) needs CAP_SYS_RESOURCE, which the
machine's sandbox lacks; so a thread raises every worker's oom_score_adj to 1000 (raising
needs no privilege) as soon as the master has forked it, every 50 ms, and the kernel takes
workers first. The proof says whether the master lived. The heal stops the thread, moves every
process back, gives the workers the master's oom_score_adj again and removes the cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from chaos.lab import ssh

MEMORY = Path("/sys/fs/cgroup/memory")
PROC = Path("/proc")
# What the heal and the proof need (the cgroup, the master's pid), one file a fault.
STATE = Path("/run/shortener-chaos")
PREFIX = "chaos-oom-"
# The threads that make the kernel pick workers, by state file; stopped by the heal.
_PREFER: dict[Path, tuple[threading.Event, threading.Thread]] = {}


def memory_cgroup(cgroup_text: str) -> str | None:
    """The memory controller's path in the text of /proc/PID/cgroup (cgroup v1), or None."""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and "memory" in parts[1].split(","):
            return parts[2]
    return None


def innermost_pid(status_text: str) -> int | None:
    """The process' pid in its own (innermost) pid namespace: the last of NSpid in /proc/PID/status."""
    for line in status_text.splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return None


def host_pids(namespace: str, pids: Iterable[int], proc: Path = PROC) -> dict[int, int]:
    """The machine's pid of each given pid of the pid namespace `namespace` ("pid:[N]", as
    `readlink /proc/self/ns/pid` shows it inside the host: namespace inodes are the machine's)."""
    wanted = set(pids)
    found: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") != namespace:
                continue
            inner = innermost_pid((entry / "status").read_text())
        except OSError:
            continue  # gone, or a kernel thread
        if inner in wanted:
            found[inner] = int(entry.name)
    return found


def oom_kills(cgroup: Path) -> int:
    """The OOM kills in a v1 memory cgroup (`oom_kill` of memory.oom_control): the kernel's proof."""
    control = dict(line.split() for line in (cgroup / "memory.oom_control").read_text().splitlines())
    return int(control.get("oom_kill", 0))


def _instance(address: str, unit: str) -> tuple[int, list[int]]:
    """The machine's pids of the unit's main process and of all its processes."""
    unit_q = shlex.quote(unit)
    cg = f"$(systemctl show -p ControlGroup --value {unit_q})"
    out = ssh(
        address,
        f"readlink /proc/self/ns/pid; systemctl show -p MainPID --value {unit_q}; "
        f"cat /sys/fs/cgroup/systemd{cg}/cgroup.procs /sys/fs/cgroup{cg}/cgroup.procs 2>/dev/null; true",
    ).split()
    namespace, main, pids = out[0], int(out[1]), {int(p) for p in out[2:]}
    mapping = host_pids(namespace, pids | {main})
    if not main or main not in mapping:
        raise RuntimeError(f"{unit} on {address}: its main process (pid {main} there) is not seen from this machine")
    return mapping[main], sorted(set(mapping.values()))


def _state_file(address: str, unit: str) -> Path:
    return STATE / f"{address}-{re.sub(r'[^A-Za-z0-9@.-]', '_', unit)}.json"


def unavailable(address: str, unit: str) -> str:
    """Why the limit cannot be set from this machine ("" when it can)."""
    if not (MEMORY / "cgroup.procs").exists() or not os.access(MEMORY, os.W_OK):
        return f"{MEMORY} (a cgroup v1 memory hierarchy) is missing or not writable on the machine that runs the suite"
    try:
        _instance(address, unit)
    except RuntimeError as error:
        return str(error)
    return ""


def _move(cgroup: Path, pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a worker that ended meanwhile
            (cgroup / "cgroup.procs").write_text(str(pid))


def _children(pid: int) -> list[int]:
    return [int(p) for p in (PROC / str(pid) / "task" / str(pid) / "children").read_text().split()]


def _set_oom_score_adj(pids: Iterable[int], value: str) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):  # ended meanwhile
            (PROC / str(pid) / "oom_score_adj").write_text(value)


def _prefer_workers(master: int, stop: threading.Event) -> None:
    """Every child of the master (its workers, the new ones included) first in the OOM
    killer's choice; ends with the master or when told."""
    while not stop.is_set():
        try:
            _set_oom_score_adj(_children(master), "1000")
        except OSError:
            return  # the master is gone
        stop.wait(0.05)


def limit(address: str, unit: str, size: int, recycle: bool = True) -> str:
    """The fault: the unit's processes in a child memory cgroup limited to `size` bytes."""
    master, pids = _instance(address, unit)
    parent = MEMORY / (memory_cgroup((PROC / str(master) / "cgroup").read_text()) or "/").lstrip("/")
    cgroup = parent / f"{PREFIX}{_state_file(address, unit).stem}"
    cgroup.mkdir(exist_ok=True)
    (cgroup / "memory.limit_in_bytes").write_text(str(size))
    if (cgroup / "memory.memsw.limit_in_bytes").exists():  # memory and swap: no way around by swapping
        (cgroup / "memory.memsw.limit_in_bytes").write_text(str(size))
    STATE.mkdir(exist_ok=True)
    state = _state_file(address, unit)
    state.write_text(json.dumps({"cgroup": str(cgroup), "master": master}))
    stop = threading.Event()
    prefer = threading.Thread(target=_prefer_workers, args=(master, stop), daemon=True)
    prefer.start()
    _PREFER[state] = (stop, prefer)
    _set_oom_score_adj(_children(master), "1000")  # before any of them is under the limit
    # The master first, so that what it forks from now on starts inside; then the workers, and
    # again any forked between the listing and the master's move.
    _move(cgroup, [master, *pids])
    _move(cgroup, _instance(address, unit)[1])
    if recycle:
        os.kill(master, signal.SIGHUP)  # Gunicorn: new workers (inside), the old ones stop gracefully
    return f"{unit}: {len(pids)} processes in {cgroup}, limit {size} bytes" + (", workers restarted" if recycle else "")


def active(address: str, unit: str) -> bool:
    """Whether a machine-side limit of the unit is on (its fault ran and was not healed)."""
    return _state_file(address, unit).exists()


def proof(address: str, unit: str) -> str:
    """The kernel's count of OOM kills in the fault's cgroup so far, and whether the master lived."""
    state = json.loads(_state_file(address, unit).read_text())
    kills = oom_kills(Path(state["cgroup"]))
    master = "alive" if (PROC / str(state["master"])).exists() else "killed too (the fault ended early)"
    return f"{kills} OOM kills in the instance's memory cgroup (kernel: memory.oom_control), the master {master}"


def release(address: str, unit: str, timeout: float = 30) -> str:
    """The heal: every process back in the parent cgroup, the cgroup removed. Nothing to do
    when no fault of this kind is on."""
    path = _state_file(address, unit)
    if not path.exists():
        return "no machine-side memory limit on"
    state = json.loads(path.read_text())
    cgroup = Path(state["cgroup"])
    counted = proof(address, unit) if cgroup.exists() else ""
    stop, prefer = _PREFER.pop(path, (threading.Event(), None))
    stop.set()
    if prefer is not None:
        prefer.join()
    deadline = time.monotonic() + timeout
    while cgroup.exists():
        _move(cgroup.parent, [int(p) for p in (cgroup / "cgroup.procs").read_text().split()])
        try:
            cgroup.rmdir()
        except OSError:  # a process forked into it meanwhile (EBUSY): move again
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with contextlib.suppress(OSError):  # the master's own value for its workers again
        master_adj = (PROC / str(state["master"]) / "oom_score_adj").read_text().strip()
        _set_oom_score_adj(_children(state["master"]), master_adj)
    path.unlink()
    return f"{unit}: back in {cgroup.parent}, {cgroup.name} removed; {counted}"
