"""Reaching a host: the ssh command line (labkit's options and the lab's key), waiting for a boot."""

from __future__ import annotations

# The tool runs fixed system commands found on PATH as root, with arguments it builds itself:
# no shell, no outside input.
# ruff: noqa: S603
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from lab.defaults import LabError
from lab.procs import log, run
from lab.supervisor import SupervisorMixin
from labkit.probes import port_open
from labkit.ssh import ssh_argv


class SshMixin(SupervisorMixin):
    """ssh into a host as root; wait until one has booted."""

    def _wait_all(self, names: Sequence[str], timeout: float) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            results = list(pool.map(lambda n: self._wait_quiet(n, timeout), names))
        failed = [name for name, err in results if err]
        for name, err in results:
            if err:
                log(f"{name}: {err}")
        if failed:
            raise LabError(f"not up: {', '.join(failed)} (logs in {self.state_dir}/NAME.log)")

    def _wait_quiet(self, name: str, timeout: float) -> tuple[str, str | None]:
        try:
            self.wait(name, timeout)
        except LabError as exc:
            return name, str(exc)
        return name, None

    def wait(self, name: str, timeout: float) -> None:
        """Until sshd takes the lab key, then until systemd has finished booting."""
        rec = self.require(name)
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while True:
            if port_open(rec["ip"], 22, 1.0, banner=b"SSH") and self.ssh_run(name, ["true"], timeout=10) == 0:
                break
            if not self.supervisor_pids(name) and not self.nspawn_pids(name):
                tail = self.log_tail(name)
                raise LabError(f"its nspawn is not running; last log lines:\n{tail}")
            if time.monotonic() > deadline:
                raise LabError(f"sshd did not answer within {timeout:.0f} s")
            time.sleep(0.5)
        t_ssh = time.monotonic() - t0
        # "running" or "degraded" both mean the boot is over; Ansible should not
        # race units that are still starting.
        left = max(5.0, deadline - time.monotonic())
        proc = subprocess.run(
            self.ssh_argv(name, ["systemctl", "is-system-running", "--wait"]),
            capture_output=True,
            text=True,
            timeout=left,
            check=False,
        )
        log(
            f"{name}: ssh after {t_ssh:.1f} s, systemd {proc.stdout.strip() or '?'} after {time.monotonic() - t0:.1f} s"
        )
        if proc.stdout.strip() == "degraded":
            self._start_cgroup_failures(name)

    def _start_cgroup_failures(self, name: str) -> None:
        """Starts again the units that failed at boot with 219/CGROUP: systemd could not put
        their process into its cgroup, a fault of the machine's cgroup v1 under nspawn when
        several hosts boot at once, not of the unit. Seen on a fresh host: systemd-user-sessions
        failed so, /run/nologin stayed and every SSH login but root's was refused (pgBackRest's
        archive-push to its repository host among them). Units failed for any other reason are
        left as they are: a reboot test must see those."""
        script = (
            "for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1); do "
            '[ "$(systemctl show -p ExecMainStatus --value "$u")" = 219 ] && echo "$u"; done'
        )
        listed = subprocess.run(self.ssh_argv(name, [script]), capture_output=True, text=True, timeout=60, check=False)
        units = listed.stdout.split()
        if units:
            log(f"{name}: starting again what failed at boot with 219/CGROUP: {' '.join(units)}")
            self.ssh_run(name, ["systemctl", "restart", *units], timeout=120)

    def ssh_argv(self, name: str, cmd: Sequence[str], tty: bool = False) -> list[str]:
        rec = self.require(name)
        argv = ssh_argv(rec["ip"], key=str(self.key_path), connect_timeout=5)
        # -t before the destination: an interactive shell needs a terminal.
        return [*argv[:-1], *(["-t"] if tty else []), argv[-1], *cmd]

    def ssh_run(self, name: str, cmd: Sequence[str], timeout: float) -> int:
        try:
            return run(self.ssh_argv(name, cmd), check=False, quiet=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 255
