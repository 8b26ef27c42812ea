"""What operators deploy beside the code (deploy/): the alert rules pass `promtool check
rules` and their own `promtool test rules`, every PromQL expression of the Grafana dashboard
is valid PromQL by promtool, and every alert has its runbook line in the README."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, unavailable

DEPLOY = ROOT / "deploy"


def promtool(*args: str, cwd: Path = DEPLOY / "prometheus") -> str:
    if shutil.which("promtool") is None:
        unavailable("promtool (Debian package prometheus)")
    done = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def alerts() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)", (DEPLOY / "prometheus" / "rules.yml").read_text(),
                      re.M)


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert "SUCCESS: 11 rules found" in promtool("check", "rules", "rules.yml")
    out = promtool("test", "rules", "rules.test.yml")
    assert "SUCCESS" in out
    promtool("check", "config", "prometheus.yml")


def test_every_alert_is_unit_tested_and_has_a_runbook_line() -> None:
    tested = (DEPLOY / "prometheus" / "rules.test.yml").read_text()
    readme = (ROOT / "README.md").read_text().split("### Alerts", 1)[1]
    assert len(alerts()) == 11
    for name in alerts():
        assert f"alertname: {name}" in tested, name
        assert f"`{name}`" in readme, name


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "hostfactory-cqrs.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:check_{n}", "expr": e} for n, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard-rules.yml").write_text(json.dumps(rules))  # YAML is JSON's superset
    promtool("check", "rules", "dashboard-rules.yml", cwd=tmp_path)


@pytest.mark.parametrize("broken", ["sum(rate(x[5m]", "histogram_quantile(0.99 x)"])
def test_the_check_catches_bad_promql(tmp_path: Path, broken: str) -> None:
    if shutil.which("promtool") is None:
        unavailable("promtool (Debian package prometheus)")
    rules = {"groups": [{"name": "g", "rules": [{"record": "r:x", "expr": broken}]}]}
    (tmp_path / "bad.yml").write_text(json.dumps(rules))
    done = subprocess.run(["promtool", "check", "rules", "bad.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
