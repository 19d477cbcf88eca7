"""RPO measured: acknowledged writes lost when the database host dies without a clean shutdown.

    python -m lab.rpo        # make up's host and the drill host of labkit.hosts
    python -m lab.rpo --host NAME=ADDRESS --drill NAME=ADDRESS --inventory PATH

1. Creates links (POST /urls with the admin key) at a fixed rate for --seconds and records each
   acknowledged one (201) with the time it was acknowledged.
2. Kills the host's PID 1 with SIGKILL (lab/lab.py finds it): a power cut, no shutdown, no
   last WAL switch. The writer stops.
3. Boots the host again with PostgreSQL masked, so that its crash recovery cannot archive the
   WAL the power cut left behind: the repository holds only what had reached it. (In a cluster
   the repository is on another host and survives anyway; on the all-in-one host its disk is
   the same, which the docs say.)
4. Restores the latest backup and WAL onto the drill host with the restore drill
   (ansible/playbooks/restore-drill.yml, restore_drill_compare=false).
5. Counts the acknowledged links missing from the restored database, and how long before the
   kill the oldest of them was acknowledged: the data window that was lost.
6. Unmasks PostgreSQL on the host and starts it again.

Prints one JSON line with the figures (docs/backups.md records them with the arithmetic).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import requests

from lab import cli as LAB  # this tool itself: PID 1 of a host, its root filesystem
from lab.hosts import Lab
from labkit.hosts import AIO_ADDRESS, AIO_NAME, DRILL_ADDRESS, DRILL_NAME
from labkit.probes import port_open
from loadtests import apikey, labssh

ROOT = Path(__file__).resolve().parents[1]
PG_UNIT = "postgresql@15-main.service"
ANSIBLE_PLAYBOOK = str(ROOT / ".venv/bin/ansible-playbook")


def parse_host(text: str) -> tuple[str, str]:
    name, _, address = text.partition("=")
    if not name or not address:
        raise argparse.ArgumentTypeError(f"{text!r}: NAME=ADDRESS")
    return name, address


class Writer(threading.Thread):
    """POST /urls at a fixed rate; keeps (short_code, acknowledged at) of every 201."""

    def __init__(self, base: str, key: str, rate: float, run_id: str) -> None:
        super().__init__(daemon=True)
        self.base, self.rate, self.run_id = base, rate, run_id
        self.session = requests.Session()
        self.session.headers.update(apikey.headers(key))
        self.acked: list[tuple[str, float]] = []
        self.errors = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        start = time.monotonic()
        while not self.stopping.is_set():
            n += 1
            url = f"https://example.com/rpo/{self.run_id}/{n}"
            try:
                answer = self.session.post(f"{self.base}/urls", json={"original_url": url}, timeout=2)
                if answer.status_code == 201:
                    self.acked.append((answer.json()["short_code"], time.time()))
                else:
                    self.errors += 1
            except requests.RequestException:
                self.errors += 1
            delay = start + n / self.rate - time.monotonic()
            if delay > 0:
                self.stopping.wait(delay)


def power_cut(lab: Lab, name: str) -> float:
    pid = lab.init_pid(name)
    if pid is None:
        raise SystemExit(f"{name}: no PID 1 found (is it up?)")
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if lab.init_pid(name) is None:
            break
        time.sleep(0.1)
    return killed


def set_postgresql_masked(lab: Lab, name: str, masked: bool) -> None:
    """Masks (or unmasks) PostgreSQL in the stopped host's own filesystem, before it boots."""
    root = lab.machine_dir(name)
    if not (root / "etc/machine-id").exists():  # an overlay host whose root is not mounted
        root = lab.overlay_dir(name) / "upper"
    link = root / "etc/systemd/system" / PG_UNIT
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    if masked:
        link.symlink_to("/dev/null")


def boot_for_the_restore(name: str, address: str) -> None:
    """Boots the cut host with PostgreSQL masked and returns once sshd answers: that boot never
    ends (the instances' start jobs wait for a /health that needs PostgreSQL), and the restore
    needs only the host's backup repository over SSH."""
    argv = ["python3", str(ROOT / "lab/lab.py"), "up", f"{name}={address}", "--timeout", "60"]
    subprocess.run(argv, check=False)  # noqa: S603 (our arguments)
    for _ in range(240):
        if port_open(address, 22, 1.0, banner=b"SSH"):
            return
        time.sleep(0.5)
    raise SystemExit(f"{name}: sshd did not answer after the power cut")


def restore(inventory: str, drill: tuple[str, str]) -> None:
    extra = {"restore_drill_name": drill[0], "restore_drill_address": drill[1], "restore_drill_compare": False}
    subprocess.run(  # noqa: S603 (the project's own ansible-playbook, our arguments)
        [
            str(ROOT / ".venv/bin/ansible-playbook"),
            "-i",
            inventory,
            "playbooks/restore-drill.yml",
            "-e",
            json.dumps(extra),
        ],
        cwd=ROOT / "ansible",
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible/ansible.cfg")},
        check=True,
    )


def restored_codes(drill_address: str, run_id: str) -> set[str]:
    query = f"SELECT short_code FROM urls WHERE original_url LIKE 'https://example.com/rpo/{run_id}/%'"  # noqa: S608 (run_id is our uuid hex)
    out = labssh.ssh(drill_address, f'runuser -u postgres -- psql -X -At -d shortener -c "{query}"')
    return set(out.split())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", type=parse_host, default=(AIO_NAME, AIO_ADDRESS), help="NAME=ADDRESS of the stack")
    parser.add_argument(
        "--drill", type=parse_host, default=(DRILL_NAME, DRILL_ADDRESS), help="NAME=ADDRESS to restore on"
    )
    parser.add_argument("--inventory", default="inventories/lab", help="inventory of the stack (relative to ansible/)")
    parser.add_argument("--rate", type=float, default=20.0, help="links created per second")
    parser.add_argument("--seconds", type=float, default=150.0, help="writing time before the power cut")
    apikey.add_argument(parser)
    args = parser.parse_args()
    lab = LAB.lab_from_args(LAB.build_parser().parse_args(["list"]))
    run_id = uuid.uuid4().hex[:12]
    writer = Writer(f"http://{args.host[1]}", apikey.resolve(args.api_key), args.rate, run_id)
    writer.start()
    time.sleep(args.seconds)
    killed = power_cut(lab, args.host[0])
    writer.stopping.set()
    writer.join(timeout=10)
    acked = [(code, at) for code, at in writer.acked if at <= killed]

    set_postgresql_masked(lab, args.host[0], True)
    try:
        boot_for_the_restore(*args.host)
        started = time.time()
        restore(args.inventory, args.drill)
        restore_seconds = time.time() - started
        present = restored_codes(args.drill[1], run_id)
    finally:
        labssh.ssh(
            args.host[1], f"rm -f /etc/systemd/system/{PG_UNIT}; systemctl daemon-reload; systemctl start {PG_UNIT}"
        )
    missing = [(code, at) for code, at in acked if code not in present]
    newest_restored = max((at for code, at in acked if code in present), default=killed)
    report = {
        "run_id": run_id,
        "rate_per_s": args.rate,
        "acknowledged": len(acked),
        "errors_before_kill": writer.errors,
        "missing": len(missing),
        "lost_window_s": round(killed - min(at for _, at in missing), 2) if missing else 0.0,
        "newest_restored_before_kill_s": round(killed - newest_restored, 2),
        "restore_playbook_s": round(restore_seconds, 1),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
