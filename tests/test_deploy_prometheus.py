"""Prometheus files: `promtool check config`, `promtool test rules` (alerts that fire and alerts
that stay silent), and the dashboard's and alerts' PromQL against the service's metric names.

promtool comes from Debian's `prometheus` package, installed by `make promtool` when missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
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
    path = shutil.which("promtool")
    assert path, "promtool is missing: run `make tools` (as root; `make test` does)"
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
    assert {
        "SaliencyAvailabilityBudgetBurn", "SaliencyAvailabilityBudgetBurnSlow", "SaliencyLatencyBudgetBurn",
        "SaliencyLatencyBudgetBurnSlow", "SaliencyInternalErrors", "SaliencyBackendUnavailable",
        "SaliencyRejectionRate", "SaliencyQueueNotDraining", "SaliencyAutoscalerAtMax", "SaliencyOOMKilled",
        "SaliencyRestarting", "SaliencyTargetDown", "SaliencyNotScraped",
    } <= alerts
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
    expected = '"100% of cam maps on efficientnet_lite0 took longer than 0.5s'
    assert expected in text
    (tmp_path / "alerts_test.yml").write_text(text.replace(expected, expected.replace("100%", "99%")))
    result = promtool_run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "SaliencyLatencyBudgetBurn" in result.stdout + result.stderr


def test_rules_and_the_charts_copies_are_what_the_generator_writes():
    """alerts.yml is generated (scripts/gen_alerts.py, `make alerts`); the chart ships copies
    of it and of the dashboard. Edit the script or deploy/grafana/saliency.json, then regenerate."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_alerts
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    for path, text in gen_alerts.outputs().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `make alerts`"


def latency_groups() -> dict[str, str]:
    """{slo: method matcher} of the latency recording rules."""
    groups = {}
    for rule in alert_rules():
        if rule.get("record", "").startswith("saliency:slo_latency_errors:"):
            groups[rule["labels"]["slo"]] = re.search(r'method(=~|!~)"([^"]+)"', rule["expr"]).group(0)
    return groups


def test_every_registered_method_has_exactly_one_latency_slo():
    """Fast methods are judged against the fast threshold, every other method against exactly
    one deep threshold: a newly registered method can never go unalerted."""
    from saliency.attribution.registry import all_methods

    def matches(matcher: str, name: str) -> bool:
        op, pattern = re.fullmatch(r'method(=~|!~)"([^"]+)"', matcher).groups()
        found = re.fullmatch(pattern, name) is not None  # PromQL regexes are anchored
        return found if op == "=~" else not found

    groups = latency_groups()
    assert set(groups) == {"fast", "deep", "perturbation"}
    for name, info in {**all_methods(), "a_method_added_later": None}.items():
        slos = [slo for slo, matcher in groups.items() if matches(matcher, name)]
        assert len(slos) == 1, (name, slos)
        if info is not None:
            assert (slos[0] == "fast") == (info.kind == "fast"), (name, info.kind, slos)


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
