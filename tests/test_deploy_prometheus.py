"""Prometheus files: `promtool check config`, `promtool test rules` (alerts that fire and alerts
that stay silent), and the dashboard's and alerts' PromQL against the service's metric names.

promtool comes from Debian's `prometheus` package, installed by `make promtool` when missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "saliency.json"

COUNTERS = {"saliency_requests_total", "saliency_rejected_total", "saliency_dropped_samples_total"}
HISTOGRAMS = {
    "saliency_method_latency_seconds", "saliency_queue_wait_seconds",
    "saliency_batch_samples", "saliency_batch_requests",
}
GAUGES = {"saliency_inflight_requests", "saliency_queue_depth"}
EXPORTED = (
    COUNTERS | GAUGES | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
)
# Recording rules of alerts.yml (saliency:...) are names the rules define, not the service.
METRIC = re.compile(r"(?<![\w:])saliency_[a-z_]+")


@pytest.fixture(scope="module")
def promtool() -> str:
    subprocess.run(["make", "-s", "promtool"], cwd=ROOT, check=True, timeout=600)
    path = shutil.which("promtool")
    assert path, "make promtool did not install promtool"
    return path


def promtool_run(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_check_config(promtool):
    result = promtool_run(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_rule_unit_tests_pass(promtool):
    result = promtool_run(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent():
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert {"SaliencyFastLatencySLO", "SaliencyRejectionRate", "SaliencyTargetDown"} <= alerts
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts <= fires, f"never shown firing: {sorted(alerts - fires)}"
    assert alerts <= silent, f"never shown silent: {sorted(alerts - silent)}"


def test_a_wrong_expectation_fails(promtool, tmp_path):
    """promtool really checks: the same tests with one expected value changed must fail."""
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    text = (PROMETHEUS / "alerts_test.yml").read_text()
    assert "is 995ms (SLO 500ms)" in text
    (tmp_path / "alerts_test.yml").write_text(text.replace("is 995ms (SLO 500ms)", "is 1s (SLO 500ms)"))
    result = promtool_run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "SaliencyFastLatencySLO" in result.stdout + result.stderr


def test_alerts_use_only_exported_metrics():
    used = {m for rule in alert_rules() for m in METRIC.findall(rule["expr"])}
    assert used and used <= EXPORTED, sorted(used - EXPORTED)


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    """Every panel query, with Grafana's variables filled in, parses as a recording rule."""
    rules = [
        {
            "record": f"dashboard:query{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$method", ".*"),
        }
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool_run(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout
