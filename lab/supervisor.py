"""The in-machine supervisor: one process per host that runs its nspawn and boots it again when
the host reboots itself; finding, stopping and killing what runs a host."""

from __future__ import annotations

# The tool runs fixed system commands found on PATH as root, with arguments it builds itself:
# no shell, no outside input.
# ruff: noqa: S603
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lab.defaults import NSPAWN_REBOOT_EXIT, LabError
from lab.procs import all_pids, log, pids_matching
from lab.state import LabState
from labkit.probes import port_open

# The supervisor is started through the tool's entry point, as the user starts the tool.
ENTRY_POINT = Path(__file__).resolve().parent / "lab.py"


def nspawn_command(name: str, directory: Path, bridge: str) -> list[str]:
    # --register=no --keep-unit: the machine's PID 1 is not systemd, so there is
    # no machined to register with and no manager to ask for a scope.
    return [
        "systemd-nspawn",
        "--boot",
        f"--directory={directory}",
        f"--machine={name}",
        f"--hostname={name}",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={bridge}",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]


def cmdline_matches_nspawn(argv: Sequence[str], name: str) -> bool:
    return bool(argv) and os.path.basename(argv[0]) == "systemd-nspawn" and (f"--machine={name}" in argv)


def cmdline_matches_supervisor(argv: Sequence[str], name: str) -> bool:
    # lab/lab.py runs the package as `python3 -m lab`; a supervisor started before the tool
    # was a package still shows lab.py.
    started_as_tool = any(a.endswith("lab.py") for a in argv) or list(argv[1:3]) == ["-m", "lab"]
    return "_supervise" in argv and argv[-1] == name and started_as_tool


class SupervisorMixin(LabState):
    """The processes that run a host: its supervisor, its nspawn, its PID 1."""

    def supervisor_pids(self, name: str) -> list[int]:
        return pids_matching(lambda argv: cmdline_matches_supervisor(argv, name))

    def nspawn_pids(self, name: str) -> list[int]:
        return pids_matching(lambda argv: cmdline_matches_nspawn(argv, name))

    def init_pid(self, name: str) -> int | None:
        """The host's PID 1 as the machine sees it.

        Found by its root directory rather than as the child of nspawn: when
        nspawn dies by SIGKILL the host's systemd lives on as an orphan that
        holds the veth, and a new nspawn for the same host fails until it dies.
        """
        try:
            want = os.stat(self.machine_dir(name))
        except FileNotFoundError:
            return None
        for pid in all_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                nspid = next(x for x in status.splitlines() if x.startswith("NSpid:"))
                if len(nspid.split()) < 3 or nspid.split()[-1] != "1":
                    continue
                root = os.stat(f"/proc/{pid}/root")
            except (OSError, StopIteration):
                continue
            if (root.st_dev, root.st_ino) == (want.st_dev, want.st_ino):
                return pid
        return None

    def state_of(self, name: str) -> str:
        rec = self.load_record(name)
        sup, nsp = self.supervisor_pids(name), self.nspawn_pids(name)
        if not sup and not nsp:
            return "orphaned" if self.init_pid(name) else "stopped"
        if not nsp:
            return "rebooting"
        if rec and port_open(rec["ip"], 22, 1.0, banner=b"SSH"):
            return "running" if sup else "running (unsupervised)"
        return "booting"

    def launch(self, name: str) -> None:
        """Start the supervisor that boots the host, in its own session."""
        with open(self.log_path(name), "ab") as logf:
            # setsid: the host must outlive this command, the shell, make and
            # the CI step that ran it.
            subprocess.Popen(
                [
                    sys.executable,
                    str(ENTRY_POINT),
                    "_supervise",
                    "--state-dir",
                    str(self.state_dir),
                    "--machines-dir",
                    str(self.machines_dir),
                    "--bridge",
                    self.bridge,
                    name,
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )

    def stop(self, name: str, timeout: float = 60.0) -> None:
        """Power the host off; kill whatever is left after ``timeout``."""
        sup = self.supervisor_pids(name)
        nsp = self.nspawn_pids(name)
        # SIGTERM to the supervisor stops its loop and is passed on to nspawn,
        # which powers the host off cleanly.
        for pid in sup or nsp:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.supervisor_pids(name) or self.nspawn_pids(name):
            if time.monotonic() > deadline:
                log(f"{name}: no clean poweroff within {timeout:.0f} s, killing it")
                for pid in self.supervisor_pids(name) + self.nspawn_pids(name):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
                break
            time.sleep(0.3)
        self.kill_orphan(name)

    def kill_orphan(self, name: str) -> None:
        """Kill a host whose nspawn is gone; its PID 1 takes the namespace with it."""
        # Right after nspawn exits its PID 1 may still be on its way out.
        for _ in range(15):
            if self.init_pid(name) is None:
                return
            time.sleep(0.2)
        for _ in range(50):
            pid = self.init_pid(name)
            if pid is None:
                return
            log(f"{name}: killing the orphaned host (PID {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        raise LabError(f"{name}: its PID 1 does not die")

    def supervise(self, name: str) -> int:
        """Run nspawn for one host; boot it again when it reboots itself."""
        stopping = False
        child: subprocess.Popen[bytes] | None = None

        def on_term(signum: int, _frame: Any) -> None:
            nonlocal stopping
            stopping = True
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        cmd = nspawn_command(name, self.machine_dir(name), self.bridge)
        boot = 0
        while not stopping:
            boot += 1
            print(
                f"[lab {time.strftime('%F %T')}] boot {boot}: {shlex.join(cmd)}",
                flush=True,
            )
            child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
            rc = child.wait()
            print(f"\n[lab {time.strftime('%F %T')}] nspawn exited with {rc}", flush=True)
            if rc != NSPAWN_REBOOT_EXIT:
                # 0 is a poweroff (in the host, or ours from `down`); anything
                # else is a failure that a loop would only repeat: `up` boots
                # the host again.
                if rc != 0:
                    self.kill_orphan(name)
                return 0 if rc == 0 else 1
            time.sleep(0.5)
        return 0
