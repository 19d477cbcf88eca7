"""chaos/memcg.py, 13-oom-instance's memory limit set from the machine's side: the parts that
read the kernel's files (the pid mapping on this machine's real /proc, the counters' format).
The fault itself runs only in `make chaos`: an OOM kill here would raise every lab host's
node_vmstat_oom_kill (the count is the machine's) and page HostOomKill wherever one runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chaos import memcg
from chaos.actions import parse_size
from chaos.run import evidence


def test_memory_cgroup_is_read_from_the_memory_line_only() -> None:
    text = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/\n"
    assert memcg.memory_cgroup(text) == "/process_api/abc"
    assert memcg.memory_cgroup("0::/user.slice\n") is None  # cgroup v2: no memory line


def test_innermost_pid_is_the_last_of_nspid() -> None:
    assert memcg.innermost_pid("Name:\tgunicorn\nNSpid:\t20511\t412\nPPid:\t1\n") == 412
    assert memcg.innermost_pid("Name:\tbash\nNSpid:\t77\n") == 77


def test_host_pids_maps_this_process_in_its_own_namespace() -> None:
    """On the real /proc: this process, found by its namespace and its pid inside it."""
    namespace = os.readlink("/proc/self/ns/pid")
    inner = memcg.innermost_pid(Path("/proc/self/status").read_text())
    assert inner is not None
    assert memcg.host_pids(namespace, [inner]) == {inner: os.getpid()}
    assert memcg.host_pids("pid:[1]", [inner]) == {}  # no process lives in a namespace of inode 1


def test_host_pids_skips_other_namespaces_with_the_same_inner_pid(tmp_path: Path) -> None:
    """Two hosts each have a pid 412: only the one in the asked namespace counts."""
    for host_pid, namespace in ((501, "pid:[4026532001]"), (601, "pid:[4026532002]")):
        entry = tmp_path / str(host_pid)
        (entry / "ns").mkdir(parents=True)
        (entry / "ns" / "pid").symlink_to(namespace)
        (entry / "status").write_text(f"NSpid:\t{host_pid}\t412\n")
    (tmp_path / "self").mkdir()
    assert memcg.host_pids("pid:[4026532002]", [412, 413], proc=tmp_path) == {412: 601}


def test_oom_kills_reads_the_kernel_file(tmp_path: Path) -> None:
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 1\noom_kill 7\n")
    assert memcg.oom_kills(tmp_path) == 7


def test_the_root_memory_cgroup_counts_oom_kills_when_cgroup_v1_is_mounted() -> None:
    if not (memcg.MEMORY / "memory.oom_control").exists():
        pytest.skip("no cgroup v1 memory hierarchy on this machine")
    assert memcg.oom_kills(memcg.MEMORY) >= 0


def test_release_without_a_fault_does_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(memcg, "STATE", tmp_path)
    assert memcg.release("10.213.0.10", "shortener@8001.service") == "no machine-side memory limit on"
    assert not memcg.active("10.213.0.10", "shortener@8001.service")


def test_parse_size_uses_base_1024() -> None:
    assert parse_size("24M") == 24 * 1024 * 1024
    assert parse_size("1G") == 1024**3
    assert parse_size("4096") == 4096


def test_evidence_is_what_the_proof_activities_returned() -> None:
    journal = {
        "run": [
            {"activity": {"name": "fault: x"}, "status": "succeeded", "output": "limit set"},
            {"activity": {"name": "proof: kills"}, "status": "succeeded", "output": "12 OOM kills"},
            {"activity": {"name": "proof: again"}, "status": "failed", "exception": ["Traceback", "KeyError: x"]},
        ]
    }
    assert evidence(journal) == "12 OOM kills; proof failed: KeyError: x"
    assert evidence({"run": []}) == ""
