"""The lab: throw-away Debian hosts (systemd-nspawn) on this machine; lab/lab.py is the tool's entry point."""
