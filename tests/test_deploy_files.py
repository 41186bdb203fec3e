"""Container and laptop-stack files, checked by parsing them (no Docker engine runs here):
deploy/Dockerfile, deploy/compose.yaml, Grafana provisioning and dashboard, the image's
service config and TorchServe's config.properties."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from saliency.runtime.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"(?<![\w:])saliency_[a-z_]+")
REQUIRED_METRICS = {
    "saliency_method_latency_seconds_bucket", "saliency_queue_wait_seconds_bucket",
    "saliency_batch_samples_bucket", "saliency_batch_requests_bucket",
    "saliency_requests_total", "saliency_rejected_total",
    "saliency_inflight_requests", "saliency_queue_depth",
}
EXPORTED = {
    "saliency_requests_total", "saliency_rejected_total", "saliency_dropped_samples_total",
    "saliency_inflight_requests", "saliency_queue_depth",
} | {
    f"{h}_{s}"
    for h in ("saliency_method_latency_seconds", "saliency_queue_wait_seconds",
              "saliency_batch_samples", "saliency_batch_requests")
    for s in ("bucket", "sum", "count")
}


# ---- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued RUN
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "dangling line continuation"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DEPLOY / "Dockerfile")


def stages(instructions) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """[(base, stage name, instructions of the stage)]; global ARGs before the first FROM."""
    result = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            result.append((words[0], name, []))
        elif result:
            result[-1][2].append((keyword, rest))
    return result


def global_args(instructions) -> dict[str, str]:
    args = {}
    for keyword, rest in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def stage_args(body) -> dict[str, str]:
    return dict(rest.partition("=")[::2] for keyword, rest in body if keyword == "ARG")


def test_dockerfile_stages_for_each_flavour_and_backend_set(dockerfile):
    args = global_args(dockerfile)
    assert args["FLAVOR"] == "cpu" and args["BACKENDS"] == "all"
    assert "python" in args["CPU_BASE"] and "nvidia/cuda" in args["CUDA_BASE"]
    parsed = stages(dockerfile)
    names = [name for _, name, _ in parsed]
    bases = dict((name, base) for base, name, _ in parsed)
    assert bases["base-cpu"] == "${CPU_BASE}" and bases["base-cuda"] == "${CUDA_BASE}"
    # A stage chosen by an ARG must exist, earlier in the file, for every value the ARG takes.
    for stage, (arg, values) in {
        "base": ("FLAVOR", ("cpu", "cuda")),
        "venv": ("BACKENDS", ("all", "embedded")),
        "runtime": ("BACKENDS", ("all", "embedded")),
    }.items():
        prefix = bases[stage].replace("${" + arg + "}", "")
        for value in values:
            assert prefix + value in names[: names.index(stage)], (stage, value)
    assert names[-1] == "runtime", "the last stage is the image"


def test_dockerfile_runtime_stage(dockerfile):
    parsed = {name: body for _, name, body in stages(dockerfile)}
    runtime = parsed["runtime"]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "runs as a non-root user"
    assert users[-1].startswith("10001")
    run = " ".join(rest for keyword, rest in runtime if keyword == "RUN")
    assert "useradd" in run and "--uid 10001" in run
    entrypoint = [json.loads(rest) for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    cmd = [json.loads(rest) for keyword, rest in runtime if keyword == "CMD"]
    assert entrypoint[-1] == ["saliency"]
    assert cmd[-1] == ["serve", "--config", "/etc/saliency/config.yaml"]
    exposed = {word for keyword, rest in runtime if keyword == "EXPOSE" for word in rest.split()}
    assert exposed == {"50051", "8000", "9464"}
    env = " ".join(rest for keyword, rest in runtime if keyword == "ENV")
    assert "SALIENCY_CACHE_DIR=/var/cache/saliency" in env
    assert any(keyword == "HEALTHCHECK" and "grpc_health" in rest for keyword, rest in runtime)
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert "--from=venv /opt/venv /opt/venv" in copies


def test_dockerfile_oci_labels(dockerfile):
    runtime = {name: body for _, name, body in stages(dockerfile)}["runtime"]
    labels = " ".join(rest for keyword, rest in runtime if keyword == "LABEL")
    for key, arg in (("version", "VERSION"), ("revision", "REVISION"), ("source", "SOURCE"), ("created", "CREATED")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in labels, key
    assert stage_args(runtime)["VERSION"] == re.search(
        r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M
    ).group(1), "the image's version label follows pyproject.toml"


def test_java_and_torchserve_only_in_the_all_backends_image(dockerfile):
    parsed = {name: body for _, name, body in stages(dockerfile)}

    def runs(stage: str) -> str:
        return " ".join(rest for keyword, rest in parsed[stage] if keyword == "RUN")

    assert "openjdk-17-jre-headless" in runs("os-all")
    assert "torchserve" in runs("venv-all") and "make models VENV=/opt/venv" in runs("venv-all")
    # The embedded image: nothing of Java or TorchServe on any stage it is built from.
    for stage in ("base-cpu", "base-cuda", "base", "build", "venv-embedded", "os-embedded"):
        assert "openjdk" not in runs(stage) and "torchserve" not in runs(stage), stage
    # A failed `make models` fails the build; no branch that ships an empty model store.
    assert "make -n" not in runs("venv-all") and "||" not in runs("venv-all")
    assert "ls model_store/*.mar" in runs("venv-all")


def test_dockerfile_installs_at_the_tested_versions_from_the_cpu_wheel_index(dockerfile):
    parsed = {name: body for _, name, body in stages(dockerfile)}
    installs = [
        rest for stage in ("build", "venv-all") for keyword, rest in parsed[stage]
        if keyword == "RUN" and "pip install" in rest
    ]
    assert installs and all(
        part.strip().startswith("pip install -c /tmp/constraints.txt ")
        for rest in installs for part in rest.split("&&") if "pip install" in part
    ), installs
    args = stage_args(parsed["build"])
    assert args["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert f"torch=={args['TORCH_VERSION']}" in (ROOT / "deploy" / "constraints.txt").read_text()
    assert any('index="$TORCH_CPU_INDEX_URL"' in rest for rest in installs)


def test_constraints_are_the_tested_venv():
    """deploy/constraints.txt pins exactly what this venv has installed (make constraints)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_constraints
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    expected = gen_constraints.render()
    assert (DEPLOY / "constraints.txt").read_text() == expected, "stale: run `make constraints`"
    for name in ("torch", "grpcio", "opentelemetry-exporter-otlp-proto-grpc", "torchserve", "locust"):
        assert f"\n{name}==" in expected, name


def test_hadolint_passes():
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hadolint"), str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_copies_existing_files(dockerfile):
    names = {name for _, name, _ in stages(dockerfile)}
    for keyword, rest in dockerfile:
        if keyword != "COPY":
            continue
        words = shlex.split(rest)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if source_stage:
            assert source_stage in names, rest
            continue
        for source in paths[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"


def test_dockerignore_keeps_local_state_out():
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for entry in (".git", ".venv", ".tools", "out", "model_store/*.mar"):
        assert entry in ignored


# ---- compose ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_services(compose):
    services = compose["services"]
    assert set(services) == {"saliency", "torchserve", "prometheus", "grafana"}
    build = services["saliency"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert services["torchserve"]["image"] == services["saliency"]["image"]
    assert "torchserve" in services["torchserve"]["profiles"]


def test_compose_ports_bind_loopback_where_intended(compose):
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond the laptop"
            published.setdefault(name, []).append((int(host_port), int(container_port)))
    assert published == {
        "saliency": [(50051, 50051), (8080, 8000)],  # gRPC; HTTP on 8000 inside (TorchServe has 8080)
        "prometheus": [(9090, 9090)],
        "grafana": [(3000, 3000)],
    }
    torchserve = compose["services"]["torchserve"]
    assert torchserve["network_mode"] == "service:saliency", "TorchServe shares the service's loopback"
    assert "ports" not in torchserve and "expose" not in torchserve


def test_compose_hardening(compose):
    for name in ("saliency", "torchserve"):
        service = compose["services"][name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "/tmp" in service["tmpfs"]


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append(((DEPLOY / source).resolve(), target))
    return mounts


def test_compose_bind_mounts_exist(compose):
    for name, service in compose["services"].items():
        for source, _target in bind_mounts(service):
            assert source.exists(), f"{name} mounts missing {source}"
    saliency = dict((t, s) for s, t in bind_mounts(compose["services"]["saliency"]))
    config = load_config(str(saliency["/etc/saliency/config.yaml"]), env={})
    assert (config.host, config.port, config.metrics_host, config.metrics_port) == ("0.0.0.0", 50051, "0.0.0.0", 9464)
    assert (config.http_enabled, config.http_host, config.http_port) == (True, "0.0.0.0", 8000)


def test_prometheus_scrapes_the_compose_service(compose):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "saliency")
    assert job["static_configs"][0]["targets"] == ["saliency:9464"]
    assert "alerts.yml" in config["rule_files"]


def test_grafana_provisioning_loads_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    mounts = {target: source for source, target in bind_mounts(grafana)}
    datasources_dir = mounts["/etc/grafana/provisioning/datasources"]
    dashboards_dir = mounts["/etc/grafana/provisioning/dashboards"]
    (datasource,) = [
        ds for f in sorted(datasources_dir.glob("*.yaml")) for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = [
        p for f in sorted(dashboards_dir.glob("*.yaml")) for p in yaml.safe_load(f.read_text())["providers"]
    ]
    dashboard_target = next(t for t, s in mounts.items() if s == DEPLOY / "grafana" / "saliency.json")
    assert str(Path(dashboard_target).parent) == provider["options"]["path"]
    env = grafana["environment"]
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_target


# ---- Grafana dashboard ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "saliency.json").read_text())


def panel_exprs(dashboard: dict) -> dict[str, list[str]]:
    return {
        panel["title"]: [t["expr"] for t in panel.get("targets", [])]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    }


def test_dashboard_uses_only_exported_metrics(dashboard):
    exprs = [e for values in panel_exprs(dashboard).values() for e in values]
    templating = [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    used = {m for text in exprs + templating for m in METRIC.findall(text)}
    assert used <= EXPORTED, f"not exported by the service: {sorted(used - EXPORTED)}"
    assert REQUIRED_METRICS <= used, f"not on the dashboard: {sorted(REQUIRED_METRICS - used)}"


def test_dashboard_panels(dashboard):
    panels = panel_exprs(dashboard)
    for quantile, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        (expr,) = panels[f"Method latency {name}"]
        assert expr.startswith(f"histogram_quantile({quantile}, sum by (le, method)")
        assert "saliency_method_latency_seconds_bucket" in expr
    assert "sum by (code)" in panels["Request rate by status code"][0]
    assert "sum by (reason)" in panels["Rejections by reason"][0]
    assert any("saliency_queue_wait_seconds_bucket" in e for e in panels["Queue wait by pool"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"


# ---- TorchServe ------------------------------------------------------------------------------


def test_torchserve_config_is_hardened():
    text = (DEPLOY / "torchserve" / "config.properties").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    for key in ("inference_address", "management_address", "metrics_address"):
        assert settings[key].startswith("http://127.0.0.1:"), key
    assert settings["grpc_inference_address"] == "127.0.0.1"
    assert settings["grpc_management_address"] == "127.0.0.1"
    assert settings["enable_model_api"] == "false"
    assert settings["disable_token_authorization"] == "false"
    assert settings["allowed_urls"] == f"file://{settings['model_store']}/.*"
    models = json.loads(settings["models"])
    assert {"efficientnet_lite0", "efficientnet_lite0-deep"} <= set(models)
