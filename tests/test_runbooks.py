"""The alert rules, their unit tests, runbooks and dashboards: checks that need no service.

- every alert has a severity, a summary, a description and a runbook_url that resolves to
  docs/runbooks/<AlertName>.md, and every runbook belongs to an alert;
- `promtool check rules` and `promtool test rules` pass, and every alert has a unit test;
- `amtool check-config` accepts the Alertmanager configuration the role renders;
- the dashboards are well-formed for Grafana's file provisioning.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages; the
fixture installs them when they are missing and apt-get can (root), else those tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "ansible" / "roles" / "prometheus"
RULE_FILES = sorted((ROLE / "files" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROLE / "tests" / "rules").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
DASHBOARDS = sorted((ROOT / "ansible" / "roles" / "grafana" / "files" / "dashboards").glob("*.json"))
ALERTMANAGER = ROOT / "ansible" / "roles" / "alertmanager"
RUNBOOK_URL = re.compile(r"^\[\[ prometheus_runbook_base_url \]\]/(?P<name>[A-Za-z0-9]+)\.md$")
SEVERITIES = {"critical", "warning"}


def alert_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


ALERTS = alert_rules()


def test_there_are_rules_and_tests():
    assert RULE_FILES and RULE_TESTS
    assert len(ALERTS) >= 15


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_alert_has_severity_summary_and_runbook(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    match = RUNBOOK_URL.match(annotations["runbook_url"])
    assert match, annotations["runbook_url"]
    assert match["name"] == rule["alert"]
    runbook = RUNBOOKS / f"{rule['alert']}.md"
    assert runbook.is_file(), f"{runbook} is missing"
    text = runbook.read_text()
    assert text.startswith(f"# {rule['alert']}\n")
    for section in ("What it means", "What users see", "What to look at first", "How to mitigate", "When to escalate"):
        assert f"## {section}" in text, f"{runbook.name}: no '{section}' section"


def test_every_runbook_belongs_to_an_alert():
    # Lower-case names are procedures that no alert starts (restore.md: the restore drill's).
    names = {rule["alert"] for rule in ALERTS}
    orphans = [path.name for path in RUNBOOKS.glob("*.md") if path.stem not in names and not path.stem.islower()]
    assert orphans == []


def test_runbook_links_resolve():
    for path in RUNBOOKS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+\.md)\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).resolve().is_file(), f"{path.name} links to {target}"


def test_every_alert_has_a_unit_test():
    tested = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    assert {rule["alert"] for rule in ALERTS} - tested == set()


def test_inhibitions_name_existing_alerts():
    defaults = yaml.safe_load((ALERTMANAGER / "defaults" / "main.yml").read_text())
    names = {rule["alert"] for rule in ALERTS}
    for inhibition in defaults["alertmanager_inhibitions"]:
        assert inhibition["source"] in names
        assert set(inhibition["targets"]) <= names


@pytest.mark.parametrize("path", DASHBOARDS, ids=[path.stem for path in DASHBOARDS])
def test_dashboard_is_provisionable(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "prometheus"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"]


# --- promtool and amtool --------------------------------------------------------------------


def _install_prometheus_tools() -> bool:
    if shutil.which("promtool") and shutil.which("amtool"):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    packages = ["prometheus", "prometheus-alertmanager"]
    apt = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if subprocess.run(apt, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(apt, env=env, capture_output=True)
    return bool(shutil.which("promtool") and shutil.which("amtool"))


@pytest.fixture(scope="module")
def tools() -> None:
    if not _install_prometheus_tools():
        pytest.skip("promtool/amtool missing and cannot be installed (needs root and apt-get)")


def _run(command: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_promtool_check_rules(tools):
    _run(["promtool", "check", "rules", *map(str, RULE_FILES)])


def test_promtool_test_rules(tools):
    output = _run(["promtool", "test", "rules", *(path.name for path in RULE_TESTS)], cwd=RULE_TESTS[0].parent)
    assert "FAILED" not in output


def test_amtool_check_config(tools, tmp_path):
    """The role's alertmanager.yml and message templates, rendered by Ansible, pass amtool."""
    ansible = Path(sys.executable).parent / "ansible"
    if not ansible.exists():
        pytest.skip("ansible is not installed next to this Python")
    defaults = yaml.safe_load((ALERTMANAGER / "defaults" / "main.yml").read_text())
    variables = tmp_path / "vars.json"
    variables.write_text(
        json.dumps(
            {
                "alertmanager_discord_webhook_url_critical": "https://discord.example/api/webhooks/1/critical",
                "alertmanager_discord_webhook_url_warning": "https://discord.example/api/webhooks/2/warning",
                "__alertmanager_templates_dir": str(tmp_path),
                "__alertmanager_config": str(tmp_path / "alertmanager.yml"),
            }
        )
    )
    for template, target in (("shortener.tmpl.j2", "shortener.tmpl"), ("alertmanager.yml.j2", "alertmanager.yml")):
        _run(
            [
                str(ansible),
                "localhost",
                "-c",
                "local",
                "-i",
                "localhost,",
                "-e",
                f"@{ALERTMANAGER / 'defaults' / 'main.yml'}",
                "-e",
                f"@{variables}",
                "-e",
                f"ansible_python_interpreter={sys.executable}",
                "-m",
                "ansible.builtin.template",
                "-a",
                f"src={ALERTMANAGER / 'templates' / template} dest={tmp_path / target}",
            ]
        )
    output = _run(["amtool", "check-config", str(tmp_path / "alertmanager.yml")])
    assert "SUCCESS" in output
    assert f"{len(defaults['alertmanager_inhibitions'])} inhibit rules" in output
    assert "1 templates" in output
