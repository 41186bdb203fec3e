"""Write the Prometheus rules (deploy/prometheus/alerts.yml) and the chart's copies of them and
of the Grafana dashboard (helm/saliency/files/), so the PrometheusRule and dashboard ConfigMap
templates ship exactly what promtool tests. `make alerts`; tests/test_deploy_prometheus.py
fails when a committed file differs from what this script writes.

SLOs over 30 days, alerted on error-budget burn with multiple windows (Google SRE workbook,
"Alerting on SLOs"): page when the last hour and the last 5 minutes both burn the budget 14.4x
as fast as sustainable (2 % of a month's budget in an hour), or the last 6 h and 30 min burn it
6x; open a ticket when the last day and 2 h burn it 3x. The short window makes an alert stop
soon after the problem does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "saliency.json"
CHART_FILES = ROOT / "helm" / "saliency" / "files"

# Availability: of the Explain / ExplainStream calls that name a served model, 99.5 % end
# without a server-side failure. Client errors (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED,
# CANCELLED) and load shedding (RESOURCE_EXHAUSTED: SaliencyRejectionRate) are not counted.
AVAILABILITY_OBJECTIVE = 0.995
SERVER_ERRORS = "INTERNAL|UNKNOWN|UNAVAILABLE|DATA_LOSS|DEADLINE_EXCEEDED"
SLO_RPCS = "Explain|ExplainStream"

# Latency: 99 % of the maps of each method group arrive within its threshold (a bucket bound
# of saliency_method_latency_seconds, service/saliency/runtime/metrics.py). Every registered
# method falls in exactly one group (tests/test_deploy_prometheus.py checks the registry):
# `deep` takes whatever the other two do not name, so a new method is covered on arrival.
LATENCY_OBJECTIVE = 0.99
FAST_METHODS = (
    "vanilla", "input_x_gradient", "gradcam", "gradcam_pp", "eigencam", "cam",
    "attention_rollout", "raw_attention",
)
# Forward-only perturbation methods: thousands of forwards by default.
PERTURBATION_METHODS = ("rise", "occlusion", "scorecam", "kernel_shap", "lime")
LATENCY_GROUPS = (
    # (slo label, method matcher, threshold in seconds = an `le` bucket bound)
    ("fast", f'method=~"{"|".join(FAST_METHODS)}"', "0.5"),
    ("deep", f'method!~"{"|".join(FAST_METHODS + PERTURBATION_METHODS)}"', "10"),
    ("perturbation", f'method=~"{"|".join(PERTURBATION_METHODS)}"', "30"),
)

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d")
PAGE_BURNS = ((14.4, "1h", "5m"), (6, "6h", "30m"))
TICKET_BURNS = ((3, "1d", "2h"),)


def availability_ratio(window: str) -> str:
    calls = f'saliency_requests_total{{rpc=~"{SLO_RPCS}",model!=""}}'
    # bad/all, not 1 - good/all: with nothing but failures there is no `good` series at all.
    bad = f'saliency_requests_total{{rpc=~"{SLO_RPCS}",model!="",code=~"{SERVER_ERRORS}"}}'
    return (
        f"sum by (model) (rate({bad}[{window}]))\n"
        f"/\nsum by (model) (rate({calls}[{window}]))"
    )


def latency_ratio(matcher: str, le: str, window: str) -> str:
    series = "saliency_method_latency_seconds"
    return (
        f'1 - (\n  sum by (model, method) (rate({series}_bucket{{{matcher},le="{le}"}}[{window}]))\n'
        f"  /\n  sum by (model, method) (rate({series}_count{{{matcher}}}[{window}]))\n)"
    )


def burn_expr(name: str, budget: float, burns) -> str:
    parts = [
        f"(\n  {name}:ratio_rate{long} > {burn * budget:g}\n  and\n  {name}:ratio_rate{short} > {burn * budget:g}\n)"
        for burn, long, short in burns
    ]
    return "\nor\n".join(parts)


def rules() -> dict:
    availability = "saliency:slo_availability_errors"
    latency = "saliency:slo_latency_errors"
    a_budget = round(1 - AVAILABILITY_OBJECTIVE, 6)
    l_budget = round(1 - LATENCY_OBJECTIVE, 6)
    recording_availability = [
        {"record": f"{availability}:ratio_rate{w}", "expr": availability_ratio(w)} for w in WINDOWS
    ]
    recording_latency = [
        {
            "record": f"{latency}:ratio_rate{w}",
            "expr": latency_ratio(matcher, le, w),
            "labels": {"slo": slo, "threshold": f"{le}s"},
        }
        for slo, matcher, le in LATENCY_GROUPS
        for w in WINDOWS
    ]
    slo_alerts = [
        {
            "alert": "SaliencyAvailabilityBudgetBurn",
            "expr": burn_expr(availability, a_budget, PAGE_BURNS),
            "for": "2m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "saliency is burning its availability error budget fast",
                "description": (
                    "{{ $value | humanizePercentage }} of calls to {{ $labels.model }} failed on the server "
                    f"(INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, ...): at this rate the 30-day budget of "
                    f"{a_budget:.1%} is gone within days. Check the access log (code) and the backend."
                ),
            },
        },
        {
            "alert": "SaliencyAvailabilityBudgetBurnSlow",
            "expr": burn_expr(availability, a_budget, TICKET_BURNS),
            "for": "15m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "saliency is slowly burning its availability error budget",
                "description": (
                    "{{ $value | humanizePercentage }} of calls to {{ $labels.model }} failed on the server over "
                    f"the last day, 3x the sustainable rate for the {AVAILABILITY_OBJECTIVE:.1%} objective."
                ),
            },
        },
        {
            "alert": "SaliencyLatencyBudgetBurn",
            "expr": burn_expr(latency, l_budget, PAGE_BURNS),
            "for": "2m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "saliency maps are slower than their latency SLO",
                "description": (
                    "{{ $value | humanizePercentage }} of {{ $labels.method }} maps on {{ $labels.model }} took "
                    "longer than {{ $labels.threshold }} (SLO: 99% within it, group {{ $labels.slo }}). "
                    "Look at queue wait and batch size on the dashboard; add replicas if queues are long."
                ),
            },
        },
        {
            "alert": "SaliencyLatencyBudgetBurnSlow",
            "expr": burn_expr(latency, l_budget, TICKET_BURNS),
            "for": "15m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "saliency maps are slowly eating their latency error budget",
                "description": (
                    "{{ $value | humanizePercentage }} of {{ $labels.method }} maps on {{ $labels.model }} took "
                    "longer than {{ $labels.threshold }} over the last day (SLO: 99% within it)."
                ),
            },
        },
    ]
    def calls_by_model(window: str) -> str:
        return f'sum by (model) (rate(saliency_requests_total{{rpc=~"{SLO_RPCS}"}}[{window}]))'

    cause_alerts = [
        {
            # A bug, not an outage: the burn alerts page when there are many.
            "alert": "SaliencyInternalErrors",
            "expr": (
                f'sum by (model) (rate(saliency_requests_total{{rpc=~"{SLO_RPCS}",code=~"INTERNAL|UNKNOWN"}}[10m]))\n'
                f"/\n{calls_by_model('10m')}\n> 0.01"
            ),
            "for": "5m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "saliency answers INTERNAL",
                "description": (
                    "{{ $value | humanizePercentage }} of calls to {{ $labels.model }} end in INTERNAL (a bug): "
                    "find the traceback by request_id in the logs (logger saliency.api.servicer)."
                ),
            },
        },
        {
            "alert": "SaliencyBackendUnavailable",
            "expr": (
                f'sum by (model) (rate(saliency_requests_total{{rpc=~"{SLO_RPCS}",code="UNAVAILABLE"}}[5m]))\n'
                f"/\n{calls_by_model('5m')}\n> 0.01"
            ),
            "for": "5m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "saliency backend unavailable",
                "description": (
                    "{{ $value | humanizePercentage }} of calls to {{ $labels.model }} fail with UNAVAILABLE: "
                    "the backend (TorchServe, or the model workers) is down."
                ),
            },
        },
        {
            # Load shedding: refused because a queue was full, the service was over its
            # in-flight budget, or the deadline passed. Bad requests are the callers' problem.
            "alert": "SaliencyRejectionRate",
            "expr": (
                "sum by (model) (rate(saliency_rejected_total{reason=~\"fast_queue_full|deep_queue_full|overloaded|deadline\"}[5m]))\n"
                f"/\n{calls_by_model('5m')}\n> 0.05"
            ),
            "for": "5m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "saliency is shedding load",
                "description": (
                    "{{ $value | humanizePercentage }} of requests to {{ $labels.model }} were rejected (queue full, "
                    "overloaded or deadline) over 5 minutes: add replicas or lower the load."
                ),
            },
        },
        {
            # Saturation without a threshold to tune: a queue seen non-empty at every evaluation
            # for 15 minutes (a healthy queue empties between bursts).
            "alert": "SaliencyQueueNotDraining",
            "expr": "saliency_queue_depth > 0",
            "for": "15m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "a saliency queue has not been empty for 15 minutes",
                "description": (
                    "The {{ $labels.pool }} queue of {{ $labels.model }} on {{ $labels.instance }} has not been empty "
                    "for 15 minutes ({{ $value }} waiting now): the pod is saturated. Add replicas (or raise the HPA's maximum)."
                ),
            },
        },
        {
            # kube-state-metrics.
            "alert": "SaliencyAutoscalerAtMax",
            "expr": (
                'kube_horizontalpodautoscaler_status_current_replicas{horizontalpodautoscaler=~".*saliency.*"}\n'
                '>=\nkube_horizontalpodautoscaler_spec_max_replicas{horizontalpodautoscaler=~".*saliency.*"}'
            ),
            "for": "15m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "saliency's autoscaler is at its maximum",
                "description": (
                    "HPA {{ $labels.namespace }}/{{ $labels.horizontalpodautoscaler }} has run at its maximum of "
                    "{{ $value }} replicas for 15 minutes: it cannot add capacity. Raise autoscaling.maxReplicas "
                    "or check the cluster's room."
                ),
            },
        },
        {
            # kube-state-metrics; the chart's containers are named saliency and torchserve.
            "alert": "SaliencyOOMKilled",
            "expr": (
                'increase(kube_pod_container_status_restarts_total{container=~"saliency|torchserve"}[15m]) > 0\n'
                "and on (namespace, pod, container)\n"
                'kube_pod_container_status_last_terminated_reason{container=~"saliency|torchserve",reason="OOMKilled"} == 1'
            ),
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "a saliency container was killed for memory",
                "description": (
                    "{{ $labels.namespace }}/{{ $labels.pod }} container {{ $labels.container }} was OOM-killed: raise "
                    "its memory limit or lower max_inflight_bytes (docs/service.md, \"Memory and overload\")."
                ),
            },
        },
        {
            "alert": "SaliencyRestarting",
            "expr": 'increase(kube_pod_container_status_restarts_total{container=~"saliency|torchserve"}[1h]) > 2',
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "a saliency container keeps restarting",
                "description": (
                    "{{ $labels.namespace }}/{{ $labels.pod }} container {{ $labels.container }} restarted "
                    "{{ $value | printf \"%.0f\" }} times in an hour: see its previous logs "
                    "(kubectl logs --previous) and the probes."
                ),
            },
        },
        {
            "alert": "SaliencyTargetDown",
            "expr": 'up{job=~".*saliency.*"} == 0',
            "for": "2m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "saliency metrics endpoint down",
                "description": (
                    "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }}): the pod is down or "
                    "its metrics port is blocked."
                ),
            },
        },
        {
            "alert": "SaliencyNotScraped",
            "expr": 'absent(up{job=~".*saliency.*"})',
            "for": "5m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "saliency is not being scraped",
                "description": (
                    "No saliency scrape target exists: the ServiceMonitor or scrape config is missing, or no pod "
                    "is running."
                ),
            },
        },
    ]
    # Each SLO's alerts sit in the group of its recording rules: rules of one group run in
    # order, so an alert reads this evaluation's ratios, not the last one's.
    return {
        "groups": [
            {"name": "saliency.slo.availability", "rules": recording_availability + slo_alerts[:2]},
            {"name": "saliency.slo.latency", "rules": recording_latency + slo_alerts[2:]},
            {
                "name": "saliency.recording",
                "rules": [
                    {
                        # The dashboard's and people's p99: not alerted on (the SLO alerts are).
                        "record": "saliency:method_latency_seconds:p99_5m",
                        "expr": (
                            "histogram_quantile(0.99,\n"
                            "  sum by (le, model, method) (rate(saliency_method_latency_seconds_bucket[5m])))"
                        ),
                    }
                ],
            },
            {"name": "saliency.alerts", "rules": cause_alerts},
        ]
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

HEADER = """\
# GENERATED by scripts/gen_alerts.py (`make alerts`): edit the script, not this file.
# Rules for the saliency service (metric names: DESIGN.md section 5), unit-tested by
# `promtool test rules alerts_test.yml` (tests/test_deploy_prometheus.py); the chart ships a copy
# (helm/saliency/files/alerts.yml) as a PrometheusRule.
#
# SLOs over 30 days (docs/deploy.md, "Alerts"):
#   availability: {availability:.1%} of Explain/ExplainStream calls end without a server-side error
#     ({errors});
#   latency: {latency:.0%} of maps within their group's threshold: {groups}.
# Burn-rate alerts page at 14.4x (1 h and 5 min) or 6x (6 h and 30 min), ticket at 3x (1 d and 2 h).
"""


def render() -> str:
    groups = ", ".join(f"{slo} {le}s" for slo, _, le in LATENCY_GROUPS)
    header = HEADER.format(
        availability=AVAILABILITY_OBJECTIVE, errors=SERVER_ERRORS.replace("|", ", "),
        latency=LATENCY_OBJECTIVE, groups=groups,
    )
    body = yaml.dump(rules(), Dumper=_Dumper, sort_keys=False, width=200, allow_unicode=True)
    return header + body


def outputs() -> dict[Path, str]:
    """Every file this script writes, with its content."""
    alerts = render()
    return {
        ALERTS: alerts,
        CHART_FILES / "alerts.yml": alerts,
        CHART_FILES / "saliency.json": DASHBOARD.read_text(),
    }


def main() -> int:
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
