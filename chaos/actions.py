"""The actions and probes the experiments (chaos/experiments/*/*.yaml) call through Chaos Toolkit.

Every function takes the experiment's configuration: `inventory`, the Ansible inventory of the
lab hosts (the runner sets it), from which `group` picks the host to act on. Nothing here acts
on anything but the hosts of that inventory.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import requests

from chaos import memcg
from chaos.lab import ROOT, host, inventory_hosts, psql, ssh
from chaos.sink import alert_received

LOCKER = "chaos-lock"  # application_name of the session that holds the lock on urls
FULL_FS = "/var/lib/postgresql/chaos-full"  # the size-limited filesystem of the disk-full fault


def base_url(configuration: dict) -> str:
    return f"http://{host(configuration, 'lb')}"


# --- probes --------------------------------------------------------------------------------------


def health_status(configuration: dict) -> int:
    try:
        return requests.get(f"{base_url(configuration)}/health", timeout=5).status_code
    except requests.RequestException:
        return 0


def unit_active(unit: str, group: str, configuration: dict) -> bool:
    return ssh(host(configuration, group), f"systemctl is-active {shlex.quote(unit)}", check=False).strip() == "active"


# --- faults --------------------------------------------------------------------------------------


def kill_main(unit: str, group: str, configuration: dict) -> str:
    """SIGKILL to the unit's main process (a crash: systemd's restart policy must act)."""
    return ssh(host(configuration, group), f"kill -9 $(systemctl show -p MainPID --value {shlex.quote(unit)})")


def kill_units(pattern: str, group: str, configuration: dict, signal: str = "KILL") -> str:
    """A signal to every process of every unit matching the pattern (all instances at once),
    read from each unit's cgroup. Not `systemctl kill`: on the lab's nspawn hosts (cgroup v1)
    it signals the main processes but then fails on the rest with "Failed to send signal
    SIGKILL to auxiliary processes: Input/output error"."""
    units = f"systemctl list-units --plain --no-legend {shlex.quote(pattern)} | cut -d' ' -f1"
    procs = "cat /sys/fs/cgroup/systemd$cg/cgroup.procs /sys/fs/cgroup$cg/cgroup.procs 2>/dev/null"
    return ssh(
        host(configuration, group),
        f"pids=$(for u in $({units}); do cg=$(systemctl show -p ControlGroup --value $u); {procs}; done | sort -u); "
        f'[ -n "$pids" ] && kill -s {shlex.quote(signal)} $pids',
    )


def signal_main(unit: str, signal: str, group: str, configuration: dict) -> str:
    """SIGSTOP hangs the daemon (it keeps its sockets, answers nothing), SIGCONT wakes it."""
    return ssh(host(configuration, group), f"systemctl kill --kill-whom=main --signal={signal} {shlex.quote(unit)}")


def systemctl(verb: str, unit: str, group: str, configuration: dict) -> str:
    return ssh(host(configuration, group), f"systemctl {verb} {shlex.quote(unit)}")


def wait_active(unit: str, group: str, configuration: dict, timeout: float = 120) -> float:
    """Seconds until the unit is active again (systemd's restart, or the heal's start)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if unit_active(unit, group, configuration):
            return time.monotonic() - start
        time.sleep(0.5)
    raise RuntimeError(f"{unit} not active within {timeout:.0f} s")


def wait_healthy(configuration: dict, timeout: float = 180) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if health_status(configuration) == 200:
            return time.monotonic() - start
        time.sleep(0.5)
    raise RuntimeError(f"/health not 200 within {timeout:.0f} s")


def lock_urls(seconds: int, configuration: dict, timeout: float = 15) -> str:
    """A session holds ACCESS EXCLUSIVE on urls: every read and write of the table waits.

    Returns once PostgreSQL shows the lock granted, or fails: the first run's command
    (`nohup PGAPPNAME=… runuser …`) made nohup look for a program named "PGAPPNAME=…", so no
    lock was ever taken, nothing failed and no page came (12-urls-lock, docs/chaos-suite.md)."""
    sql = f"BEGIN; LOCK TABLE urls IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({int(seconds)}); COMMIT;"
    conninfo = shlex.quote(f"dbname=shortener application_name={LOCKER}")
    cmd = f"runuser -u postgres -- psql {conninfo} -Xqc {shlex.quote(sql)}"
    ssh(host(configuration), f"nohup {cmd} >/dev/null 2>&1 &")
    held = (
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        f"WHERE a.application_name = '{LOCKER}' AND l.relation = 'urls'::regclass "
        "AND l.mode = 'AccessExclusiveLock' AND l.granted"
    )
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if psql(host(configuration), held) == "1":
            return f"ACCESS EXCLUSIVE on urls held after {time.monotonic() - start:.1f} s"
        time.sleep(0.5)
    raise RuntimeError(f"the lock on urls was not granted within {timeout:.0f} s")


def unlock_urls(configuration: dict) -> str:
    query = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{LOCKER}'"
    return psql(host(configuration), query)


def _memory_limit_file(unit: str) -> str:
    """Shell: the file that holds the unit's memory limit in its cgroup (cgroup v2 or v1)."""
    cg = f"$(systemctl show -p ControlGroup --value {shlex.quote(unit)})"
    return f"cg={cg}; f=/sys/fs/cgroup$cg/memory.max; [ -e $f ] || f=/sys/fs/cgroup/memory$cg/memory.limit_in_bytes"


def _systemd_limits(unit: str, address: str) -> bool:
    """Whether systemd can limit the unit's memory on its host: the unit's own limit file is
    there and writable. Not on the lab's nspawn hosts (the machine runs cgroup v1): the memory
    controller is mounted read-only in the host, so MemoryMax= is accepted, written to a
    drop-in and never applied (the first run of 13-oom-instance "passed" without any OOM kill).
    There chaos/memcg.py sets the limit from the machine's side."""
    probe = f'{_memory_limit_file(unit)}; if [ -w "$f" ]; then echo yes; fi'
    return ssh(address, probe).strip() == "yes"


def memory_limit_unavailable(unit: str, group: str, configuration: dict) -> str:
    """Why the unit's memory cannot be limited, by systemd or from the machine ("" when it can)."""
    address = host(configuration, group)
    if _systemd_limits(unit, address):
        return ""
    reason = memcg.unavailable(address, unit)
    return reason and f"systemd cannot limit the memory of {unit} on its host, nor this machine: {reason}"


def memory_max(unit: str, value: str, group: str, configuration: dict, machine_value: str = "") -> str:
    """The unit's memory limit below its use: the OOM killer. By systemd (MemoryMax=`value` until
    the next boot) where it can; failing that (the lab), from the machine's side with
    `machine_value`, which counts only what the instance allocates from the fault on
    (chaos/memcg.py). Fails unless the kernel holds the limit (a limit not applied is no fault)."""
    where = host(configuration, group)
    if not _systemd_limits(unit, where):
        return memcg.limit(where, unit, parse_size(machine_value or value))
    ssh(where, f"systemctl set-property --runtime {shlex.quote(unit)} MemoryMax={value}")
    applied = ssh(where, f'{_memory_limit_file(unit)}; cat "$f"', check=False).strip()
    wanted = str(parse_size(value))
    if applied != wanted:
        raise RuntimeError(f"MemoryMax={value} of {unit} not applied: the cgroup says {applied or 'nothing'}")
    return f"memory limit of {unit}: {applied} bytes"


def parse_size(value: str) -> int:
    """systemd's size notation with a K, M or G suffix (base 1024) in bytes."""
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(value[-1:].upper(), 1)
    return int(value.rstrip("KMGkmg")) * factor


def oom_kills(unit: str, group: str, configuration: dict) -> str:
    """The proof that the fault was one: the kernel's count of OOM kills under the limit
    (the machine-side cgroup's, or the unit's cgroup v2 memory.events)."""
    where = host(configuration, group)
    if memcg.active(where, unit):
        return memcg.proof(where, unit)
    cg = f"$(systemctl show -p ControlGroup --value {shlex.quote(unit)})"
    events = ssh(where, f"grep -h '^oom_kill ' /sys/fs/cgroup{cg}/memory.events", check=False).split()
    return f"{events[-1] if events else '?'} OOM kills (kernel, the unit's memory.events)"


def clear_memory_max(unit: str, group: str, configuration: dict) -> str:
    """Back to the unit's own limit: the runtime setting removed, the machine-side cgroup gone."""
    where = host(configuration, group)
    drop_in = f"/run/systemd/system.control/{unit}.d/50-MemoryMax.conf"
    ssh(where, f"rm -f {shlex.quote(drop_in)} && systemctl daemon-reload")
    return memcg.release(where, unit)


def fill_database_fs(size_mb: int, configuration: dict) -> str:
    """The urls table moved onto a small tmpfs made for the purpose, which is then filled up:
    never the machine's own disk, nor the rest of the database."""
    address = host(configuration)
    ssh(
        address,
        f"mkdir -p {FULL_FS} && (mountpoint -q {FULL_FS} || "
        f"mount -t tmpfs -o size={int(size_mb)}M chaos-full {FULL_FS}) && "
        f"chown postgres:postgres {FULL_FS} && chmod 700 {FULL_FS}",
    )
    psql(address, f"CREATE TABLESPACE chaos_full LOCATION '{FULL_FS}'")
    psql(address, "ALTER TABLE urls SET TABLESPACE chaos_full")
    fill = f"dd if=/dev/zero of={FULL_FS}/filler bs=1M 2>/dev/null; df -h {FULL_FS} | tail -1"
    return ssh(address, fill, check=False)


def free_database_fs(configuration: dict) -> str:
    return ssh(host(configuration), f"rm -f {FULL_FS}/filler")


def restore_database_fs(configuration: dict) -> str:
    """After the measurement: urls back in the default tablespace, the tmpfs gone."""
    address = host(configuration)
    psql(address, "ALTER TABLE urls SET TABLESPACE pg_default")
    psql(address, "DROP TABLESPACE IF EXISTS chaos_full")
    return ssh(address, f"umount {FULL_FS} && rmdir {FULL_FS}", check=False)


def reboot(group: str, configuration: dict) -> str:
    """Powers the lab host off and boots it again (lab/lab.py restart: the host's own name)."""
    address = host(configuration, group)
    names = [
        line.split()[0]
        for line in subprocess.run(
            ["python3", str(ROOT / "lab" / "lab.py"), "list"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[1:]
        if address in line.split()
    ]
    if len(names) != 1:
        raise RuntimeError(f"no single lab host has the address {address}: {names}")
    return subprocess.run(
        ["python3", str(ROOT / "lab" / "lab.py"), "restart", names[0]], capture_output=True, text=True, check=True
    ).stdout


# --- network faults (the five-host lab: make chaos-cluster) --------------------------------------

PARTITION_TABLE = "chaos_partition"  # the nftables table of a partition, removed by its heal


def peers(configuration: dict, group: str, only_first: bool) -> list[str]:
    members = inventory_hosts(Path(configuration["inventory"]))[group]
    return members[:1] if only_first else members


def partition(group: str, peer_group: str, configuration: dict, only_first_peer: bool = False) -> str:
    """Every packet between the hosts of `group` and those of `peer_group` (or its first host)
    dropped, both ways, on each host of `group`: a table of its own at a priority before the
    firewall's, so established connections stop too (a cut cable, not a refusal)."""
    addresses = ", ".join(peers(configuration, peer_group, only_first_peer))
    rules = (
        f"table inet {PARTITION_TABLE} {{\n"
        f"  chain input {{ type filter hook input priority -10; ip saddr {{ {addresses} }} drop; }}\n"
        f"  chain output {{ type filter hook output priority -10; ip daddr {{ {addresses} }} drop; }}\n"
        "}\n"
    )
    return "".join(ssh(member, "nft -f -", stdin=rules) for member in peers(configuration, group, False))


def heal_partition(group: str, configuration: dict) -> str:
    return "".join(
        ssh(member, f"nft delete table inet {PARTITION_TABLE}", check=False)
        for member in peers(configuration, group, False)
    )


# The delay of 16-db-slow-300ms: chaos/delayrelay.py on each host of `group`, the connections
# to the peers' port redirected into it by nftables (tc netem needs sch_netem and sch_prio,
# which the development machine's kernel lacks: docs/chaos-suite.md).
DELAY_TABLE = "chaos_delay"
DELAY_SCRIPT = "/run/chaos-delayrelay.py"
DELAY_UNIT = "chaos-delay-relay"
DELAY_PORT = 16000  # + the peer's index: where the relay for that peer listens (127.0.0.1)
DELAY_MARK = 0x5348  # on the relay's own upstream sockets, which the redirect lets through


def delay(group: str, peer_group: str, ms: int, configuration: dict, port: int = 6432) -> str:
    """`ms` added to what the hosts of `group` send to `port` of the hosts of `peer_group`: new
    connections go through the relay (an nftables redirect), and the ones open before are
    ended (`ss -K`) so that the pools reconnect through it, as netem would slow them too."""
    relay = (Path(__file__).resolve().parent / "delayrelay.py").read_text()
    targets = list(enumerate(peers(configuration, peer_group, False)))
    rules = "".join(
        f"    ip daddr {address} tcp dport {int(port)} redirect to :{DELAY_PORT + n}\n" for n, address in targets
    )
    table = (
        f"table ip {DELAY_TABLE} {{\n  chain output {{\n    type nat hook output priority -100;\n"
        f"    meta mark {DELAY_MARK} return\n{rules}  }}\n}}\n"
    )
    out = []
    for member in peers(configuration, group, False):
        ssh(member, f"cat > {DELAY_SCRIPT}", stdin=relay)
        for n, address in targets:
            listen = DELAY_PORT + n
            ssh(
                member,
                f"systemd-run --quiet --collect --unit={DELAY_UNIT}-{n} python3 {DELAY_SCRIPT} "
                f"{listen} {address} {int(port)} {int(ms)} {DELAY_MARK} && "
                f"for i in $(seq 50); do ss -Hltn 'sport = :{listen}' | grep -q . && exit 0; sleep 0.1; done; exit 1",
            )
        # The redirect, then at once (the relay's own first connection waits `ms`) the end of
        # the connections opened before it.
        kills = " ".join(f"&& ss -K dst {address} dport = :{int(port)} >/dev/null" for _, address in targets)
        out.append(ssh(member, f"nft -f - {kills}", stdin=table))
    return "".join(out)


def undelay(group: str, configuration: dict) -> str:
    """The heal: no new connection through the relay, and the relay delays nothing more (the
    connections it carries stay up, as a removed qdisc leaves them). Only the redirect rules
    go: the nat chain must stay, for while a nat chain of the family exists the kernel goes on
    translating the connections redirected before; deleting the table (as the first run did)
    left every relayed connection talking to an address that no longer answered for it, and
    both click workers hung on one (docs/chaos-suite.md)."""
    return "".join(
        ssh(
            member,
            f"nft flush chain ip {DELAY_TABLE} output; systemctl kill --signal=USR1 '{DELAY_UNIT}-*.service'",
            check=False,
        )
        for member in peers(configuration, group, False)
    )


def stop_delay(configuration: dict, group: str = "app") -> str:
    """After the measurement: the relays stopped, which resets every connection they carried
    (their clients learn it through the still-present nat chain; the pools reconnect directly),
    then the table and the script gone."""
    return "".join(
        ssh(
            member,
            f"systemctl stop '{DELAY_UNIT}-*.service'; nft delete table ip {DELAY_TABLE}; rm -f {DELAY_SCRIPT}",
            check=False,
        )
        for member in peers(configuration, group, False)
    )


# --- the Discord sink ----------------------------------------------------------------------------


def hold_until_alert(alert: str, configuration: dict, timeout: float = 150, least: float = 20) -> float:
    """Keeps the fault on until the alert reached the sink (or the timeout): seconds waited."""
    start = time.time()
    while time.time() - start < timeout:
        if time.time() - start >= least and alert_received(alert, configuration, start - 5) is not None:
            break
        time.sleep(3)
    return time.time() - start
