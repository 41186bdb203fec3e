"""The HTTP port in the deployment: the chart (rendered by `make chart` as tests/test_deploy_chart.py
does) exposes it on the container, the Service, the NetworkPolicy and an optional Ingress, with
probes unchanged; compose publishes it; http.enabled=false takes it away everywhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from test_deploy_chart import (
    CHART,
    HELM,
    ROOT,
    containers,
    helm_env,
    kinds,
    only,
    rendered,
    service_config,
)

__all__ = ["rendered"]  # the module fixture, shared
HTTP_PORT = 8000


def template(tmp_path: Path, *flags: str) -> list[dict]:
    result = subprocess.run([str(HELM), "template", "saliency", str(CHART), *flags], capture_output=True, text=True,
                            env=helm_env(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_the_container_and_the_service_expose_http_and_the_probes_stay_on_grpc(rendered, tmp_path):
    for name, docs in rendered.items():
        saliency = containers(docs)["saliency"]
        assert {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"} in saliency["ports"], name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "httpGet" not in saliency[probe], (name, probe)
            assert saliency[probe].get("grpc", {}).get("port") == 50051 or saliency[probe]["tcpSocket"] == {
                "port": "grpc"}, (name, probe)
        service = next(s for s in kinds(docs, "Service") if s["spec"].get("clusterIP") != "None")
        (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
        assert (http["port"], http["targetPort"]) == (HTTP_PORT, "http"), name
        config = service_config(docs, tmp_path)
        assert (config.http_enabled, config.http_host, config.http_port) == (True, "0.0.0.0", HTTP_PORT), name
    tls = next(s for s in kinds(rendered["http"], "Service") if s["spec"].get("clusterIP") != "None")
    assert next(p for p in tls["spec"]["ports"] if p["name"] == "http")["appProtocol"] == "https"


def test_the_http_ingress_routes_to_the_http_port_with_https_to_tls_pods(rendered):
    docs = rendered["http"]
    ingress = only(docs, "Ingress")
    assert ingress["metadata"]["name"].endswith("-http")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "48m"
    (rule,) = ingress["spec"]["rules"]
    assert rule["http"]["paths"][0]["backend"]["service"]["port"] == {"name": "http"}
    assert ingress["spec"]["tls"] == [{"hosts": ["saliency.example.com"], "secretName": "saliency-http-tls"}]
    assert not kinds(rendered["default"], "Ingress")


def test_the_network_policy_admits_http_from_http_from(rendered):
    rules = only(rendered["http"], "NetworkPolicy")["spec"]["ingress"]
    (http,) = [r for r in rules if r["ports"][0]["port"] == HTTP_PORT]
    assert http["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}}}]
    (default,) = [r for r in only(rendered["default"], "NetworkPolicy")["spec"]["ingress"]
                  if r["ports"][0]["port"] == HTTP_PORT]
    assert "from" not in default  # any source, as the gRPC port by default


def test_http_disabled_takes_the_port_away_everywhere(rendered, tmp_path):
    docs = template(tmp_path, "--set", "http.enabled=false", "--set", "http.ingress.enabled=true",
                    "--set", "http.ingress.hosts[0].host=x.example.com")
    assert all(p["name"] != "http" for s in kinds(docs, "Service") for p in s["spec"]["ports"])
    assert all(p["name"] != "http" for c in containers(docs).values() for p in c.get("ports", []))
    assert HTTP_PORT not in {p["port"] for r in only(docs, "NetworkPolicy")["spec"]["ingress"] for p in r["ports"]}
    assert not kinds(docs, "Ingress")
    assert service_config(docs, tmp_path).http_enabled is False


@pytest.mark.parametrize("flags", [["--set", "http.port=8080"], ["--set", "http.ingress.enabled=true"],
                                   ["--set-string", "http.enabled=yes"]],
                         ids=["torchserve-port", "ingress-without-host", "enabled-string"])
def test_the_schema_refuses_bad_http_values(rendered, flags, tmp_path):
    result = subprocess.run([str(HELM), "template", "saliency", str(CHART), *flags], capture_output=True, text=True,
                            env=helm_env(tmp_path), timeout=60)
    assert result.returncode != 0 and "schema" in result.stderr.lower(), result.stderr


def test_compose_publishes_http_on_the_laptop_loopback():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    assert "127.0.0.1:8080:8000" in compose["services"]["saliency"]["ports"]
    config = yaml.safe_load((ROOT / "deploy" / "config" / "service.yaml").read_text())
    assert (config["http_host"], config["http_port"]) == ("0.0.0.0", HTTP_PORT)
