"""The shared toolbox of everything that drives lab hosts from this machine.

The lab tool (lab/), the walk-through (lab/walkthrough.py), the load tests (loadtests/) and the
Molecule verify tests (molecule/*/tests) import it; it imports nothing of theirs, and nothing
beyond the standard library at import time (the lab tool runs under the system python3):

- labkit.hosts: the lab's subnet, `make up`'s host and its address, the lab's state directory
  and SSH key, and the hosts of a Molecule inventory.
- labkit.ssh: the SSH options and running a command on a lab host as root.
- labkit.probes: is a TCP port open (and does it speak first, like sshd).
- labkit.traffic: requests in a background thread, counting the answers while a fault is made.
"""
