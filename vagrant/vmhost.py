"""The machine's side of the Vagrant path (issue 15, docs/deployment.md "The Vagrant path").

    python3 -m vagrant.vmhost box      # the Debian 12 box for the libvirt provider, added to Vagrant
    python3 -m vagrant.vmhost start    # libvirt's daemons, if they are not running (recorded)
    python3 -m vagrant.vmhost stop     # the VM's libvirt network and the daemons `start` started

Run as root from the repository root (the Makefile's vagrant-* targets do). Standard library
only, like the lab tool, whose Debian facts it shares (lab/defaults.py: suite, mirrors, the
packages a host needs before Ansible).

The box boots its kernel directly (libvirt's kernel/initrd/cmdline, set by the box's own
Vagrantfile): the image is one ext4 file system written by `mke2fs -d` from a debootstrapped
folder, so the build needs no partition table, no boot loader, no loop device and no mount.
"""

from __future__ import annotations

# Fixed system commands found on PATH, run as root with arguments built here: no shell.
# ruff: noqa: S603, S607
import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from lab.defaults import BASE_PACKAGES, DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR, SUITE
from lab.render import render_sources_list

STATE_DIR = Path(os.environ.get("SHORTENER_VAGRANT_STATE_DIR", "/var/lib/shortener-vagrant"))
BOX_NAME = "shortener/debian12"
# What Vagrant and Ansible need on top of the lab's base: a kernel to boot, and ifupdown with a
# DHCP client, which both Debian's official boxes and Vagrant's Debian guest plugin expect.
# python3-apt: Ansible's apt module installs it itself when it is missing, then imports it; under
# mitogen (make vagrant-up) that import fails in the Python it keeps, so the box brings it.
BOX_PACKAGES = (
    *BASE_PACKAGES,
    "linux-image-amd64",
    "initramfs-tools",
    "ifupdown",
    "isc-dhcp-client",
    "python3-apt",
)
# The one disk, virtio (vagrant-libvirt's default bus), is the root file system: no partitions.
ROOT_DEVICE = "/dev/vda"
# net.ifnames=0: the NIC is eth0 whatever slot libvirt gives it (the interfaces file names it).
KERNEL_CMDLINE = f"root={ROOT_DEVICE} rw console=ttyS0 net.ifnames=0"
# Vagrant's well-known insecure key: Vagrant logs in with it once and replaces it by a key of
# the VM's own (config.ssh.insert_key, on by default). Debian's vagrant package ships it.
INSECURE_KEY_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
    "/usr/lib/ruby/vendor_ruby/vagrant/keys/vagrant.pub",
    "/usr/share/vagrant/keys/vagrant.pub",
)
# libvirt's daemons, in start order; each writes /run/NAME.pid when started with -d.
DAEMONS = ("virtlogd", "libvirtd")
RUN_DIR = Path("/run")
LIBVIRT_URI = "qemu:///system"
# Debian's libvirt defines a "default" NAT network on 192.168.122.0/24 and starts it with the
# daemon: not this project's subnet, so its autostart link is removed before the first start.
DEFAULT_NETWORK_AUTOSTART = Path("/etc/libvirt/qemu/networks/autostart/default.xml")
# The chains libvirt 9 adds for its networks (table, parent chain, chain); left empty once the
# last network is gone, removed by `stop` after a daemon it started.
LIBVIRT_CHAINS = (
    ("filter", "INPUT", "LIBVIRT_INP"),
    ("filter", "OUTPUT", "LIBVIRT_OUT"),
    ("filter", "FORWARD", "LIBVIRT_FWO"),
    ("filter", "FORWARD", "LIBVIRT_FWI"),
    ("filter", "FORWARD", "LIBVIRT_FWX"),
    ("nat", "POSTROUTING", "LIBVIRT_PRT"),
    ("mangle", "POSTROUTING", "LIBVIRT_PRT"),
)


def log(msg: str) -> None:
    print(f"[vagrant] {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], *, check: bool = True, quiet: bool = False, env: dict[str, str] | None = None) -> int:
    out = subprocess.DEVNULL if quiet else None
    code = subprocess.run(list(cmd), check=False, stdout=out, stderr=out, env=env).returncode
    if check and code != 0:
        raise SystemExit(f"[vagrant] command failed ({code}): {' '.join(cmd)}")
    return code


# --- The box ---------------------------------------------------------------------------------


def render_box_vagrantfile(cmdline: str = KERNEL_CMDLINE) -> str:
    """The Vagrantfile inside the box: Vagrant merges it under the project's (vagrant/Vagrantfile)."""
    return (
        f"# The box {BOX_NAME}, built by `make vagrant-box` (vagrant/vmhost.py). It has no boot loader:\n"
        "# libvirt boots the kernel and initrd kept next to this file.\n"
        'Vagrant.configure("2") do |config|\n'
        '  config.vm.provider "libvirt" do |libvirt|\n'
        '    libvirt.kernel = File.join(__dir__, "vmlinuz")\n'
        '    libvirt.initrd = File.join(__dir__, "initrd.img")\n'
        f'    libvirt.cmd_line = "{cmdline}"\n'
        "  end\n"
        "end\n"
    )


def render_metadata(size_gb: int) -> str:
    return json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": size_gb}) + "\n"


HOSTKEYS_UNIT = """\
# Written by vagrant/vmhost.py: a box carries no SSH host keys, each VM makes its own.
[Unit]
Description=SSH host keys of this VM (first boot)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
RequiredBy=ssh.service
"""

INTERFACES = """\
# Written by vagrant/vmhost.py: the first NIC (Vagrant's management network) by DHCP.
# Vagrant's Debian guest plugin appends its private networks below.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
"""


def insecure_public_key() -> str:
    for pattern in INSECURE_KEY_GLOBS:
        for path in sorted(glob.glob(pattern)):
            return Path(path).read_text()
    raise SystemExit("[vagrant] Vagrant's insecure public key (keys/vagrant.pub) not found: is vagrant installed?")


def debootstrap(root: Path, mirror: str) -> None:
    log(f"debootstrap {SUITE} with a kernel into {root}")
    run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(BOX_PACKAGES)}", SUITE, str(root), mirror],
        quiet=True,
    )


def configure_rootfs(root: Path, mirror: str, security_mirror: str) -> None:
    """What turns a debootstrapped folder into a Vagrant box's root file system."""
    (root / "etc/apt/sources.list").write_text(render_sources_list(mirror, security_mirror))
    (root / "etc/hostname").write_text("debian12\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tdebian12\n::1\tlocalhost ip6-localhost\n")
    (root / "etc/fstab").write_text(f"{ROOT_DEVICE}\t/\text4\terrors=remount-ro\t0\t1\n")
    (root / "etc/network/interfaces").write_text(INTERFACES)
    (root / "etc/systemd/system/ssh-host-keys.service").write_text(HOSTKEYS_UNIT)
    chroot = ["chroot", str(root)]
    run([*chroot, "systemctl", "enable", "ssh-host-keys.service"], quiet=True)
    # The apt timers would take the dpkg lock in the middle of a provisioning (as in the lab).
    run([*chroot, "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer"], quiet=True)
    run([*chroot, "useradd", "--create-home", "--shell", "/bin/bash", "vagrant"])
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    ssh_dir = root / "home/vagrant/.ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(insecure_public_key())
    (ssh_dir / "authorized_keys").chmod(0o600)
    run([*chroot, "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh"])
    # Made per VM at its first boot: host keys (the unit above) and the machine id (systemd).
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()
    run([*chroot, "apt-get", "clean"], quiet=True)
    empty_apt_lists(root)


def empty_apt_lists(root: Path) -> None:
    """No package lists in the box (stale the day after), and nothing that says they are fresh.

    Ansible's apt module (`update_cache` with `cache_valid_time`) takes the lists folder's mtime
    for the time of the last update when apt's success stamp is missing: a folder recreated at
    the build would be an hour's "fresh" cache with no lists in it, and a VM provisioned within
    the hour of its box's build failed with "No package matching 'curl' is available".
    """
    lists = root / "var/lib/apt/lists"
    shutil.rmtree(lists, ignore_errors=True)
    (lists / "partial").mkdir(parents=True)
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/apt/periodic/update-success-stamp").unlink()
    os.utime(lists, (0, 0))


def make_image(root: Path, work: Path, size_gb: int) -> None:
    """box.img (qcow2) from the folder, and the kernel and initrd libvirt boots."""
    # mke2fs -d copies whatever it finds: a /proc or /sys debootstrap left mounted would go in.
    prefix = f"{root.resolve()}/"
    for mountpoint in reversed([line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]):
        if mountpoint.startswith(prefix):
            run(["umount", "--lazy", mountpoint])
    if not list((root / "boot").glob("initrd.img-*")):
        run(["chroot", str(root), "update-initramfs", "-c", "-k", "all"], quiet=True)
    for name, pattern in (("vmlinuz", "vmlinuz-*"), ("initrd.img", "initrd.img-*")):
        found = sorted((root / "boot").glob(pattern))
        if not found:
            raise SystemExit(f"[vagrant] no {pattern} in {root}/boot: did the kernel install?")
        shutil.copyfile(found[-1], work / name)
    raw = work / "root.raw"
    with raw.open("wb") as f:
        f.truncate(size_gb * 1024**3)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-d", str(root), str(raw)])
    run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "box.img")])
    raw.unlink()


def build_box(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    work = STATE_DIR / "box.tmp"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "rootfs"
    work.mkdir(parents=True)
    debootstrap(root, args.mirror)
    configure_rootfs(root, args.mirror, args.security_mirror)
    t_rootfs = time.monotonic() - t0
    make_image(root, work, args.size_gb)
    shutil.rmtree(root)
    (work / "metadata.json").write_text(render_metadata(args.size_gb))
    (work / "Vagrantfile").write_text(render_box_vagrantfile())
    box_file = work / "shortener-debian12.box"
    with tarfile.open(box_file, "w") as tar:
        for name in ("metadata.json", "Vagrantfile", "vmlinuz", "initrd.img", "box.img"):
            tar.add(work / name, arcname=name)
    env = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"}
    run(["vagrant", "box", "add", "--force", "--name", args.name, str(box_file)], env=env)
    shutil.rmtree(work)
    log(
        f"box {args.name} built and added in {time.monotonic() - t0:.0f} s "
        f"(root file system {t_rootfs:.0f} s, image and box {time.monotonic() - t0 - t_rootfs:.0f} s)"
    )


# --- libvirt's daemons -----------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        return [p.decode() for p in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if p]
    except OSError:
        return []


def daemon_pid(name: str) -> int | None:
    """The running daemon's pid from its pid file, if that process is still the daemon."""
    try:
        pid = int((RUN_DIR / f"{name}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    argv = _cmdline(pid)
    return pid if argv and Path(argv[0]).name == name else None


def _records() -> dict[str, int]:
    try:
        return json.loads((STATE_DIR / "daemons.json").read_text())
    except (OSError, ValueError):
        return {}


def _save_records(records: dict[str, int]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / "daemons.json").write_text(json.dumps(records) + "\n")


def write_emulator_wrapper(nice: int) -> Path:
    """qemu under `nice`: libvirt starts the emulator it is given (the Vagrantfile's emulator_path)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE_DIR.chmod(0o755)  # qemu runs as libvirt-qemu and must reach this file
    path = STATE_DIR / "qemu-system-x86_64-nice"
    text = f'#!/bin/sh\nexec nice -n {nice} /usr/bin/qemu-system-x86_64 "$@"\n'
    # Rewritten only when it changes: libvirt probes an emulator again (a qemu run, a minute
    # under emulation) whenever the binary's ctime differs from its capabilities cache's.
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    if path.stat().st_mode & 0o777 != 0o755:
        path.chmod(0o755)
    return path


def start_daemons(args: argparse.Namespace) -> None:
    records = {name: pid for name, pid in _records().items() if daemon_pid(name) == pid}
    autostart = DEFAULT_NETWORK_AUTOSTART
    if daemon_pid("libvirtd") is None and (autostart.is_symlink() or autostart.exists()):
        log(f"libvirt's default network (192.168.122.0/24) no longer starts with libvirtd: {DEFAULT_NETWORK_AUTOSTART}")
        DEFAULT_NETWORK_AUTOSTART.unlink()
    for name in DAEMONS:
        if daemon_pid(name) is not None:
            continue
        run([name, "-d"])
        for _ in range(50):
            if (pid := daemon_pid(name)) is not None:
                records[name] = pid
                log(f"started {name} (pid {pid}); `make vagrant-down` stops it")
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"[vagrant] {name} did not start")
        _save_records(records)
    for _ in range(60):
        if run(["virsh", "-c", LIBVIRT_URI, "version"], check=False, quiet=True) == 0:
            break
        time.sleep(0.5)
    else:
        raise SystemExit(f"[vagrant] libvirtd does not answer on {LIBVIRT_URI}")
    if args.nice is not None:
        print(write_emulator_wrapper(args.nice))


def remove_network(name: str) -> None:
    virsh = ["virsh", "-c", LIBVIRT_URI]
    if run([*virsh, "net-info", name], check=False, quiet=True) != 0:
        return
    run([*virsh, "net-destroy", name], check=False, quiet=True)
    run([*virsh, "net-undefine", name], quiet=True)
    log(f"libvirt network {name} removed")


def remove_empty_libvirt_chains() -> None:
    for table, parent, chain in LIBVIRT_CHAINS:
        listed = subprocess.run(
            ["iptables", "-w", "-t", table, "-S", chain], capture_output=True, text=True, check=False
        )
        if listed.returncode != 0 or len(listed.stdout.splitlines()) > 1:
            continue  # absent, or still holding rules (another libvirt network): left alone
        while run(["iptables", "-w", "-t", table, "-D", parent, "-j", chain], check=False, quiet=True) == 0:
            pass
        run(["iptables", "-w", "-t", table, "-X", chain], check=False, quiet=True)


def stop_daemons(args: argparse.Namespace) -> None:
    if daemon_pid("libvirtd") is not None:
        for network in args.network:
            remove_network(network)
    records = _records()
    for name in reversed(DAEMONS):
        pid = records.pop(name, None)
        if pid is None or daemon_pid(name) != pid:
            continue
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):
            if daemon_pid(name) != pid:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        log(f"stopped {name} (pid {pid})")
        if name == "libvirtd":
            remove_empty_libvirt_chains()
    _save_records(records)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m vagrant.vmhost", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    box = sub.add_parser("box", help="build the Debian 12 box and add it to Vagrant")
    box.add_argument("--name", default=BOX_NAME)
    box.add_argument("--size-gb", type=int, default=20, help="the VM's disk (sparse)")
    env = os.environ
    box.add_argument("--mirror", default=env.get("SHORTENER_LAB_MIRROR") or DEFAULT_MIRROR)
    box.add_argument("--security-mirror", default=env.get("SHORTENER_LAB_SECURITY_MIRROR") or DEFAULT_SECURITY_MIRROR)
    box.set_defaults(func=build_box)
    start = sub.add_parser("start", help="start virtlogd and libvirtd if they are not running")
    start.add_argument("--nice", type=int, default=None, help="also write a qemu wrapper at this niceness; print it")
    start.set_defaults(func=start_daemons)
    stop = sub.add_parser("stop", help="remove the libvirt network(s), stop the daemons `start` started")
    stop.add_argument("--network", action="append", default=[], help="libvirt network to remove (repeatable)")
    stop.set_defaults(func=stop_daemons)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("[vagrant] run as root")
    args.func(args)


if __name__ == "__main__":
    main()
