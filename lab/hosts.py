"""The hosts: made from the base (an overlay, or a copy), booted, restarted, removed."""

from __future__ import annotations

# The tool runs fixed system commands found on PATH as root, with arguments it builds itself:
# no shell, no outside input.
import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab.defaults import LabError
from lab.image import ImageMixin
from lab.network import NetworkMixin
from lab.procs import log, run
from lab.render import render_hosts_file, render_network_file, render_resolv_conf
from lab.specs import HostSpec, validate_name
from lab.ssh import SshMixin


class Lab(ImageMixin, NetworkMixin, SshMixin):
    """The lab on this machine: what each command of the tool does."""

    def create_host(self, spec: HostSpec) -> None:
        """Copy the base into a new host and give it its identity."""
        name, ip = spec.name, spec.ip
        target = self.machine_dir(name)
        if target.exists():
            raise LabError(f"{target} exists but is not a lab host; move it away first")
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        self.log_path(name).write_bytes(b"")
        # The record comes first so that `down` cleans up a half-made host.
        self.record_path(name).write_text(
            json.dumps(
                {
                    "name": name,
                    "ip": str(ip),
                    "subnet": str(self.subnet),
                    "created": time.time(),
                },
                indent=2,
            )
            + "\n"
        )
        self.machines_dir.mkdir(parents=True, exist_ok=True)
        storage = "overlay"
        try:
            self.mount_overlay(name)
        except LabError as exc:
            # A kernel without overlayfs (or a state dir on a file system that
            # cannot be an upper layer): a full copy works everywhere.
            log(f"{name}: {exc}; copying the base instead")
            with contextlib.suppress(OSError):
                target.rmdir()
            shutil.rmtree(self.overlay_dir(name), ignore_errors=True)
            run(["cp", "-a", "--reflink=auto", str(self.base_dir), str(target)])
            storage = "copy"
        rec = json.loads(self.record_path(name).read_text())
        self.record_path(name).write_text(json.dumps({**rec, "storage": storage}, indent=2) + "\n")
        (target / ".complete").unlink()
        etc = target / "etc"
        (etc / "hostname").write_text(f"{name}\n")
        (etc / "hosts").write_text(render_hosts_file(name, ip))
        (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
        (etc / "systemd/network").mkdir(parents=True, exist_ok=True)
        (etc / "systemd/network/10-host0.network").write_text(render_network_file(ip, self.subnet))
        resolv = etc / "resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        resolv.write_text(render_resolv_conf(self.nameservers()))
        run(["ssh-keygen", "-A", "-f", str(target)], quiet=True)
        ssh_dir = target / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        auth = ssh_dir / "authorized_keys"
        auth.write_text(Path(f"{self.key_path}.pub").read_text())
        auth.chmod(0o600)

    def mount_overlay(self, name: str) -> None:
        """Mount the host's root: the shared read-only base under its own upper layer.

        Creating a host is then instant and costs no disk, where a copy of the
        base took 5-15 s per host on ext4 (no reflinks) with several at once.
        The base must never change while hosts use it, so it is built once and
        removed only by `down --purge` when no host is left.
        """
        target = self.machine_dir(name)
        if os.path.ismount(target):
            return
        upper, work = self.overlay_dir(name) / "upper", self.overlay_dir(name) / "work"
        for d in (upper, work, target):
            d.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={self.base_dir},upperdir={upper},workdir={work}"
        if run(["mount", "-t", "overlay", "overlay", "-o", opts, str(target)], check=False) != 0:
            raise LabError(f"overlay mount on {target} failed")

    def remove_root(self, name: str) -> None:
        target = self.machine_dir(name)
        if os.path.ismount(target):
            for _ in range(10):
                if run(["umount", str(target)], check=False, quiet=True) == 0:
                    break
                time.sleep(0.5)
            else:
                run(["umount", "--lazy", str(target)])
        rec = self.load_record(name) or {}
        if rec.get("storage", "copy") == "overlay" or self.overlay_dir(name).exists():
            with contextlib.suppress(FileNotFoundError, OSError):
                target.rmdir()
            shutil.rmtree(self.overlay_dir(name), ignore_errors=True)
        if target.exists() and not os.path.ismount(target):
            shutil.rmtree(target)

    def up(self, specs: Sequence[HostSpec], timeout: float) -> None:
        t0 = time.monotonic()
        with self.locked():
            self.ensure_tools()
            self.ensure_key()
            self.ensure_base()
            self.ensure_network()
            for spec in specs:
                rec = self.load_record(spec.name)
                if rec and rec["ip"] != str(spec.ip):
                    raise LabError(f"{spec.name} exists with address {rec['ip']}; `down` it first")
                for other in self.records():
                    if other["name"] != spec.name and other["ip"] == str(spec.ip):
                        raise LabError(f"{spec.ip} is taken by {other['name']}")
            new = [spec for spec in specs if self.load_record(spec.name) is None]
            if new:
                t1 = time.monotonic()
                # Host keys (RSA above all) take about a second per host: in parallel.
                with ThreadPoolExecutor(max_workers=len(new)) as pool:
                    list(pool.map(self.create_host, new))
                names = ", ".join(s.name for s in new)
                log(f"{names}: created from the base in {time.monotonic() - t1:.1f} s")
            for spec in specs:
                rec = self.load_record(spec.name)
                if self.supervisor_pids(spec.name) or self.nspawn_pids(spec.name):
                    log(f"{spec.name}: already up")
                    continue
                if rec and rec.get("storage") == "overlay":
                    # after a reboot of the machine itself
                    self.mount_overlay(spec.name)
                if not (self.machine_dir(spec.name) / "etc/machine-id").exists():
                    raise LabError(f"{spec.name}: its root is gone; `down {spec.name}` and `up` again")
                self.kill_orphan(spec.name)
                self.launch(spec.name)
                log(f"{spec.name}: booting at {spec.ip}")
        # Boot in parallel: every host was launched above, now wait for all.
        self._wait_all([s.name for s in specs], timeout)
        log(f"up: {', '.join(s.name for s in specs)} in {time.monotonic() - t0:.1f} s")

    def restart(self, names: Sequence[str], timeout: float) -> None:
        """Power hosts off and boot them again, keeping their disks."""
        with self.locked():
            for name in names:
                self.require(name)
            for name in names:
                self.stop(name)
                self.launch(name)
                log(f"{name}: booting again")
        self._wait_all(names, timeout)

    def down(self, names: Sequence[str], purge: bool) -> None:
        with self.locked():
            everything = not names
            if everything:
                names = [r["name"] for r in self.records()]
            for name in names:
                validate_name(name)
            known = [n for n in names if self.load_record(n) is not None]
            for name in sorted(set(names) - set(known)):
                log(f"{name}: not a lab host, nothing to do")
            t0 = time.monotonic()
            # Power them off at once: a clean poweroff takes seconds each.
            with ThreadPoolExecutor(max_workers=max(1, len(known))) as pool:
                list(pool.map(self.stop, known))
            for name in known:
                self.remove_root(name)
                self.record_path(name).unlink()
            if known:
                log(f"down: {', '.join(known)} in {time.monotonic() - t0:.1f} s")
            if everything:
                self.teardown_network()
                for name in [p.stem for p in self.state_dir.glob("*.log")]:
                    self.log_path(name).unlink()
                for path in (self.key_path, Path(f"{self.key_path}.pub")):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                for path in (self.hosts_dir, self.state_dir / "overlay"):
                    with contextlib.suppress(OSError):
                        path.rmdir()
                if purge:
                    for path in (self.base_dir, self.state_dir / "base.tmp"):
                        if path.exists():
                            shutil.rmtree(path)
                log(
                    f"lab removed: hosts, bridge {self.bridge}, NAT rules"
                    + (", base image" if purge else " (base image kept; --purge removes it)")
                )

    def list_hosts(self) -> list[tuple[str, str, str]]:
        return [(r["name"], r["ip"], self.state_of(r["name"])) for r in self.records()]
