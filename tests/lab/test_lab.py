"""Unit tests for the pure parts of the lab tool (lab/): no root, no hosts, no network."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from lab import cli, defaults, network, render, specs, supervisor

NET = ipaddress.IPv4Network("10.213.0.0/24")


# ---- subnet and addresses ---------------------------------------------------


def test_default_subnet_gateway_is_first_address() -> None:
    net = specs.parse_subnet(defaults.DEFAULT_SUBNET)
    assert net == NET
    assert str(specs.gateway_of(net)) == "10.213.0.1"


@pytest.mark.parametrize("text", ["10.213.0.1/24", "10.213.0.0/30", "nonsense", "10.213.0.0/33"])
def test_bad_subnets_are_refused(text: str) -> None:
    with pytest.raises(defaults.LabError):
        specs.parse_subnet(text)


def test_other_subnet_moves_gateway() -> None:
    net = specs.parse_subnet("192.168.77.0/26")
    assert str(specs.gateway_of(net)) == "192.168.77.1"


def test_host_spec_parses() -> None:
    spec = specs.parse_host_spec("lab-aio=10.213.0.10", NET)
    assert spec.name == "lab-aio"
    assert spec.ip == ipaddress.IPv4Address("10.213.0.10")


@pytest.mark.parametrize(
    "text",
    [
        "lab-aio",  # no address
        "=10.213.0.10",  # no name
        "lab-aio=",  # empty address
        "lab-aio=10.213.1.10",  # outside the lab network
        "lab-aio=10.213.0.0",  # network address
        "lab-aio=10.213.0.1",  # the bridge
        "lab-aio=10.213.0.255",  # broadcast
        "lab-aio=10.213.0.300",  # not an address
        "Lab=10.213.0.10",  # upper case
        "1lab=10.213.0.10",  # starts with a digit
        "lab-=10.213.0.10",  # ends with '-'
        "lab_aio=10.213.0.10",  # underscore is not a hostname character
        f"{'a' * 33}=10.213.0.10",  # too long for a veth name
    ],
)
def test_bad_host_specs_are_refused(text: str) -> None:
    with pytest.raises(defaults.LabError):
        specs.parse_host_spec(text, NET)


def test_duplicate_names_and_addresses_are_refused() -> None:
    with pytest.raises(defaults.LabError, match="duplicate name"):
        specs.parse_host_specs(["a1=10.213.0.10", "a1=10.213.0.11"], NET)
    with pytest.raises(defaults.LabError, match="duplicate address"):
        specs.parse_host_specs(["a1=10.213.0.10", "a2=10.213.0.10"], NET)


def test_cluster_specs_parse_in_order() -> None:
    parsed = specs.parse_host_specs(["mol-lb=10.213.0.40", "mol-app1=10.213.0.41", "mol-app2=10.213.0.42"], NET)
    assert [s.name for s in parsed] == ["mol-lb", "mol-app1", "mol-app2"]


# ---- files written into a host ---------------------------------------------


def test_network_file_has_static_address_and_gateway() -> None:
    text = render.render_network_file(ipaddress.IPv4Address("10.213.0.30"), NET)
    assert "[Match]\nName=host0\n" in text
    assert "Address=10.213.0.30/24\n" in text
    assert "Gateway=10.213.0.1\n" in text
    assert "LinkLocalAddressing=no" in text


def test_network_file_follows_the_subnet() -> None:
    net = ipaddress.IPv4Network("172.30.8.0/22")
    text = render.render_network_file(ipaddress.IPv4Address("172.30.9.7"), net)
    assert "Address=172.30.9.7/22\n" in text
    assert "Gateway=172.30.8.1\n" in text


def test_hosts_file_names_the_host() -> None:
    text = render.render_hosts_file("mol-db", ipaddress.IPv4Address("10.213.0.43"))
    assert "10.213.0.43\tmol-db\n" in text
    assert text.startswith("127.0.0.1\tlocalhost\n")


def test_nameservers_skip_loopback_and_ipv6() -> None:
    conf = (
        "# comment\nnameserver 127.0.0.53\nnameserver 10.255.255.53\n"
        "nameserver fd00::1\nnameserver 10.255.255.53\nnameserver bogus\nsearch example\n"
    )
    assert render.nameservers_from_resolv_conf(conf) == ["10.255.255.53"]
    assert render.nameservers_from_resolv_conf("nameserver 127.0.0.1\n") == []


def test_resolv_conf_lists_nameservers() -> None:
    text = render.render_resolv_conf(["10.0.0.2", "10.0.0.3"])
    assert text.splitlines()[1:] == ["nameserver 10.0.0.2", "nameserver 10.0.0.3"]


def test_sources_list_uses_the_given_mirrors() -> None:
    text = render.render_sources_list("http://mirror.invalid/debian", "http://mirror.invalid/sec")
    assert text.splitlines() == [
        "deb http://mirror.invalid/debian bookworm main",
        "deb http://mirror.invalid/debian bookworm-updates main",
        "deb http://mirror.invalid/sec bookworm-security main",
    ]


# ---- inventory ----------------------------------------------------------------


def test_inventory_lists_hosts_and_connection_vars() -> None:
    text = render.render_inventory([("lab-aio", "10.213.0.10")], "/var/lib/shortener-lab/id_ed25519")
    lines = text.splitlines()
    assert lines[1:3] == ["[lab]", "lab-aio ansible_host=10.213.0.10"]
    assert "ansible_user=root" in lines
    assert "ansible_ssh_private_key_file=/var/lib/shortener-lab/id_ed25519" in lines
    assert "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'" in lines


def test_inventory_groups() -> None:
    hosts = [("lab-lb", "10.213.0.20"), ("lab-app1", "10.213.0.21"), ("lab-app2", "10.213.0.22")]
    text = render.render_inventory(hosts, "/k", [("lb", ["lab-lb"]), ("app", ["lab-app1", "lab-app2"])])
    assert "\n[lb]\nlab-lb\n" in text
    assert "\n[app]\nlab-app1\nlab-app2\n" in text


def test_inventory_group_with_unknown_host_is_refused() -> None:
    with pytest.raises(defaults.LabError, match="lab-db"):
        render.render_inventory([("lab-lb", "10.213.0.20")], "/k", [("db", ["lab-db"])])


def test_inventory_is_valid_for_ansible_ini_parser() -> None:
    configparser = pytest.importorskip("configparser")
    text = render.render_inventory([("h1", "10.213.0.50")], "/k", [("app", ["h1"])])
    parser = configparser.ConfigParser(allow_no_value=True, delimiters=("=",))
    parser.read_string(text)
    assert parser.sections() == ["lab", "app", "lab:vars"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("app=a1,a2", ("app", ["a1", "a2"])), ("db=db1", ("db", ["db1"]))],
)
def test_group_spec(text: str, expected: tuple[str, list[str]]) -> None:
    assert specs.parse_group_spec(text) == expected


@pytest.mark.parametrize("text", ["app", "app=", "a-b=x1", "=x1"])
def test_bad_group_spec(text: str) -> None:
    with pytest.raises(defaults.LabError):
        specs.parse_group_spec(text)


# ---- commands it runs ---------------------------------------------------------


def test_nspawn_command_has_the_pitfall_flags() -> None:
    cmd = supervisor.nspawn_command("mol-aio", Path("/var/lib/machines/mol-aio"), "shlab0")
    assert cmd[0] == "systemd-nspawn"
    for flag in (
        "--boot",
        "--register=no",
        "--keep-unit",
        "--network-bridge=shlab0",
        "--machine=mol-aio",
        "--directory=/var/lib/machines/mol-aio",
    ):
        assert flag in cmd
    assert supervisor.cmdline_matches_nspawn(cmd, "mol-aio")
    assert not supervisor.cmdline_matches_nspawn(cmd, "mol-ai")


def test_supervisor_match_is_exact() -> None:
    argv = ["/usr/bin/python3", "/w/lab/lab.py", "_supervise", "--bridge", "shlab0", "mol-app1"]
    assert supervisor.cmdline_matches_supervisor(argv, "mol-app1")
    assert not supervisor.cmdline_matches_supervisor(argv, "mol-app")
    assert not supervisor.cmdline_matches_supervisor(["/usr/bin/vim", "mol-app1"], "mol-app1")


def test_supervisor_started_through_the_entry_point_runs_as_the_package() -> None:
    # lab/lab.py execs `python3 -m lab ...`: that is the supervisor's command line now.
    argv = ["/usr/bin/python3", "-m", "lab", "_supervise", "--bridge", "shlab0", "mol-app1"]
    assert supervisor.cmdline_matches_supervisor(argv, "mol-app1")
    assert not supervisor.cmdline_matches_supervisor(
        ["/usr/bin/python3", "-m", "other", "_supervise", "mol-app1"], "mol-app1"
    )
    assert supervisor.ENTRY_POINT.name == "lab.py" and supervisor.ENTRY_POINT.exists()


def test_the_entry_point_runs_the_tool_from_any_folder(tmp_path: Path) -> None:
    """lab/lab.py as the docs call it, from another folder: a relative --state-dir stays the caller's."""
    import subprocess
    import sys

    state = tmp_path / "state"
    state.mkdir()
    proc = subprocess.run(
        [sys.executable, str(supervisor.ENTRY_POINT), "list", "--state-dir", "state"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["NAME", "IP", "STATE"]
    proc = subprocess.run(
        [sys.executable, str(supervisor.ENTRY_POINT), "inventory", "--state-dir=nowhere"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "[lab]" in proc.stdout, proc.stderr


def test_nat_rules_and_iptables_args() -> None:
    rules = network.nat_rules(NET, "shlab0")
    masq = network.iptables_args("-C", rules[0])
    assert masq[:6] == ["iptables", "-w", "-t", "nat", "-C", "POSTROUTING"]
    assert masq[6:11] == ["-s", "10.213.0.0/24", "!", "-o", "shlab0"]
    assert masq[-2:] == ["-j", "MASQUERADE"]
    assert all(defaults.RULE_COMMENT in r for r in rules)
    assert network.iptables_args("-D", rules[1])[4:6] == ["-D", "FORWARD"]


# ---- argument parsing -----------------------------------------------------------


def test_parser_up_with_options() -> None:
    args = cli.build_parser().parse_args(
        ["up", "--subnet", "10.9.0.0/24", "--mirror", "http://m.invalid/d", "a1=10.9.0.5", "a2=10.9.0.6"]
    )
    assert args.command == "up"
    assert args.hosts == ["a1=10.9.0.5", "a2=10.9.0.6"]
    built = cli.lab_from_args(args, env={})
    assert built.subnet == ipaddress.IPv4Network("10.9.0.0/24")
    assert built.mirror == "http://m.invalid/d"
    assert built.bridge == "shlab0"
    assert built.state_dir == Path("/var/lib/shortener-lab")


def test_env_overrides_defaults_and_flags_override_env() -> None:
    env = {
        "SHORTENER_LAB_SUBNET": "10.77.0.0/24",
        "SHORTENER_LAB_MIRROR": "http://env.invalid/debian",
        "SHORTENER_LAB_STATE_DIR": "/tmp/labstate",
    }
    built = cli.lab_from_args(cli.build_parser().parse_args(["list"]), env=env)
    assert built.subnet == ipaddress.IPv4Network("10.77.0.0/24")
    assert built.mirror == "http://env.invalid/debian"
    assert built.state_dir == Path("/tmp/labstate")
    args = cli.build_parser().parse_args(["list", "--subnet", "10.88.0.0/24"])
    assert cli.lab_from_args(args, env=env).subnet == ipaddress.IPv4Network("10.88.0.0/24")


def test_default_mirror_when_nothing_given() -> None:
    built = cli.lab_from_args(cli.build_parser().parse_args(["up", "a1=10.213.0.50"]), env={})
    assert built.mirror == defaults.DEFAULT_MIRROR
    assert built.security_mirror == defaults.DEFAULT_SECURITY_MIRROR


def test_subnet_falls_back_to_network_state_then_default(tmp_path: Path) -> None:
    built = cli.lab_from_args(cli.build_parser().parse_args(["list", "--state-dir", str(tmp_path)]), env={})
    assert built.subnet == NET
    (tmp_path / "network.json").write_text('{"subnet": "10.66.0.0/24", "bridge": "shlab0"}')
    assert built.subnet == ipaddress.IPv4Network("10.66.0.0/24")


@pytest.mark.parametrize(
    ("argv", "attr", "value"),
    [
        (["down"], "names", []),
        (["down", "--purge"], "purge", True),
        (["down", "a1", "a2"], "names", ["a1", "a2"]),
        (["ssh", "a1", "systemctl", "is-active", "nginx"], "cmd", ["systemctl", "is-active", "nginx"]),
        (["ssh", "a1"], "cmd", []),
        (["wait", "a1", "--timeout", "5"], "timeout", 5.0),
        (["inventory", "--group", "app=a1", "--group", "db=a2"], "group", ["app=a1", "db=a2"]),
        (["restart", "a1"], "names", ["a1"]),
        (["shell", "a1"], "name", "a1"),
    ],
)
def test_parser_commands(argv: list[str], attr: str, value: object) -> None:
    assert getattr(cli.build_parser().parse_args(argv), attr) == value


def test_parser_requires_a_command_and_hosts_for_up() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["up"])


def test_list_and_inventory_work_without_root_on_an_empty_lab(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["list", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("NAME")
    assert cli.main(["inventory", "--state-dir", str(tmp_path)]) == 0
    assert "[lab]" in capsys.readouterr().out
