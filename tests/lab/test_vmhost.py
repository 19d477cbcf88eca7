"""vagrant/vmhost.py's pure parts: the box's own files, and which daemon a pid file names.

The box build and the daemons themselves run in `make vagrant-box` / `make vagrant-up` (root,
libvirt): docs/deployment.md, "The Vagrant path".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from vagrant import vmhost


def test_the_box_vagrantfile_boots_the_kernel_and_initrd_shipped_in_the_box() -> None:
    text = vmhost.render_box_vagrantfile()
    assert 'libvirt.kernel = File.join(__dir__, "vmlinuz")' in text
    assert 'libvirt.initrd = File.join(__dir__, "initrd.img")' in text
    assert f'libvirt.cmd_line = "{vmhost.KERNEL_CMDLINE}"' in text
    # The kernel mounts the disk the image is written to, and the NIC is the interfaces file's.
    assert f"root={vmhost.ROOT_DEVICE} " in vmhost.KERNEL_CMDLINE
    assert "net.ifnames=0" in vmhost.KERNEL_CMDLINE and "iface eth0 inet dhcp" in vmhost.INTERFACES


def test_the_box_metadata_is_a_libvirt_qcow2_box() -> None:
    assert json.loads(vmhost.render_metadata(20)) == {"provider": "libvirt", "format": "qcow2", "virtual_size": 20}


def test_the_box_has_what_vagrant_and_ansible_need() -> None:
    packages = ("openssh-server", "sudo", "python3", "python3-apt", "linux-image-amd64", "ifupdown", "isc-dhcp-client")
    for package in packages:
        assert package in vmhost.BOX_PACKAGES


def test_the_box_has_no_package_lists_and_nothing_calls_its_cache_fresh(tmp_path) -> None:
    lists = tmp_path / "var/lib/apt/lists"
    (lists / "partial").mkdir(parents=True)
    (lists / "deb.debian.org_debian_dists_bookworm_InRelease").write_text("stale")
    stamp = tmp_path / "var/lib/apt/periodic/update-success-stamp"
    stamp.parent.mkdir(parents=True)
    stamp.touch()
    vmhost.empty_apt_lists(tmp_path)
    assert [p.name for p in lists.iterdir()] == ["partial"]  # apt needs partial/ to update
    assert not stamp.exists()
    # What Ansible's apt module reads as the last update (no stamp): older than any cache_valid_time.
    assert lists.stat().st_mtime == 0


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(vmhost, "RUN_DIR", tmp_path)
    return tmp_path


def test_a_pid_file_names_the_daemon_only_while_that_process_runs_it(run_dir) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while vmhost._cmdline(sleeper.pid)[:1] != ["sleep"] and time.monotonic() < deadline:
            time.sleep(0.01)  # until the child has exec'd sleep
        (run_dir / "sleep.pid").write_text(f"{sleeper.pid}\n")
        assert vmhost.daemon_pid("sleep") == sleeper.pid
        # The same pid under another daemon's name: another program, not that daemon.
        (run_dir / "libvirtd.pid").write_text(f"{sleeper.pid}\n")
        assert vmhost.daemon_pid("libvirtd") is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert vmhost.daemon_pid("sleep") is None  # gone: a stale pid file
    assert vmhost.daemon_pid("virtlogd") is None  # no pid file at all
    (run_dir / "virtlogd.pid").write_text("garbage\n")
    assert vmhost.daemon_pid("virtlogd") is None


def test_the_qemu_wrapper_is_rewritten_only_when_its_niceness_changes(tmp_path, monkeypatch) -> None:
    # libvirt probes an emulator whose ctime changed again: an unchanged wrapper must keep its.
    monkeypatch.setattr(vmhost, "STATE_DIR", tmp_path / "state")
    wrapper = vmhost.write_emulator_wrapper(10)
    assert wrapper.read_text().splitlines()[1] == 'exec nice -n 10 /usr/bin/qemu-system-x86_64 "$@"'
    assert wrapper.stat().st_mode & 0o777 == 0o755
    first = wrapper.stat().st_ctime_ns
    time.sleep(0.02)
    assert vmhost.write_emulator_wrapper(10) == wrapper
    assert wrapper.stat().st_ctime_ns == first
    vmhost.write_emulator_wrapper(5)
    assert "nice -n 5 " in wrapper.read_text()
    assert wrapper.stat().st_ctime_ns != first


def test_commands_other_than_root_are_refused(monkeypatch) -> None:
    if os.geteuid() == 0:
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit, match="root"):
        vmhost.main(["stop"])
    assert sys.modules["vagrant.vmhost"] is vmhost
