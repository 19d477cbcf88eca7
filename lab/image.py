"""What the machine needs once: the tools, the lab's SSH key and the Debian base image."""

from __future__ import annotations

# The tool runs fixed system commands found on PATH as root, with arguments it builds itself:
# no shell, no outside input.
# ruff: noqa: S603
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lab.defaults import BASE_PACKAGES, SUITE, TOOL_PACKAGES, LabError
from lab.procs import log, run
from lab.render import nameservers_from_resolv_conf, render_sources_list
from lab.state import LabState


class ImageMixin(LabState):
    """Tools, key and base image: each made once, then reused by every host."""

    def ensure_tools(self) -> None:
        missing = sorted({pkg for cmd, pkg in TOOL_PACKAGES.items() if not shutil.which(cmd)})
        if not missing:
            return
        t0 = time.monotonic()
        log(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        ):
            # Quiet unless it fails: the output is long and says nothing useful.
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout + proc.stderr)
                raise LabError(f"command failed ({proc.returncode}): {shlex.join(cmd)}")
        log(f"tools installed in {time.monotonic() - t0:.1f} s")

    def ensure_key(self) -> None:
        if self.key_path.exists():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "shortener-lab",
                "-f",
                str(self.key_path),
            ]
        )

    def ensure_base(self) -> None:
        if (self.base_dir / ".complete").exists():
            return
        t0 = time.monotonic()
        tmp = self.state_dir / "base.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        if self.base_dir.exists():
            shutil.rmtree(self.base_dir)
        log(f"building the Debian {SUITE} base image (once; about a minute)")
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(tmp),
                self.mirror,
            ],
            stdout=subprocess.DEVNULL,
        )
        (tmp / "etc/apt/sources.list").write_text(render_sources_list(self.mirror, self.security_mirror))
        # networkd gives each host its static address; the apt timers would take
        # the dpkg lock in the middle of a converge after a reboot.
        run(
            ["systemctl", f"--root={tmp}", "enable", "systemd-networkd.service"],
            quiet=True,
        )
        run(
            [
                "systemctl",
                f"--root={tmp}",
                "mask",
                "apt-daily.timer",
                "apt-daily-upgrade.timer",
            ],
            quiet=True,
        )
        # Host keys and machine-id are per host: made when a host is created.
        for key in (tmp / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        (tmp / "etc/machine-id").write_text("")
        with contextlib.suppress(FileNotFoundError):
            (tmp / "var/lib/dbus/machine-id").unlink()
        run(["chroot", str(tmp), "apt-get", "clean"], quiet=True)
        (tmp / ".complete").write_text(f"{SUITE} {self.mirror}\n")
        tmp.rename(self.base_dir)
        log(f"base image ready in {time.monotonic() - t0:.1f} s")

    def nameservers(self) -> list[str]:
        if self._nameservers:
            return self._nameservers
        found: list[str] = []
        for path in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"):
            with contextlib.suppress(OSError):
                found = nameservers_from_resolv_conf(Path(path).read_text())
            if found:
                return found
        raise LabError("no usable nameserver on this machine: pass --nameserver")
