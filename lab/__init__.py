"""The lab: throw-away Debian 12 hosts for the project, made with systemd-nspawn (docs/lab.md).

Each host boots systemd as PID 1, has a fixed address on the bridge ``shlab0``, runs sshd with a
key made for the lab, and reaches the Debian package mirror through NAT. Standard library (and
labkit) only: the tool runs as root before any virtualenv exists (``make up`` on a fresh machine).

Entry point lab/lab.py; modules: defaults (fixed facts), specs (NAME=IP, subnets), render (files
written into hosts, the inventory), procs (commands, processes), state (paths, records, lock),
image (tools, key, base image), network (bridge, NAT), supervisor (the process that runs a
host's nspawn and survives its reboots), ssh (reaching a host, waiting for its boot), hosts
(`Lab`: create, up, restart, down), cli (the command line). walkthrough.py is not the tool: the
induced-fault walk-through (``python -m lab.walkthrough``).
"""
