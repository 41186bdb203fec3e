"""The Helm chart serves user models (issue 11): model configs, weights and model code mounted
from an existing PersistentVolumeClaim, or copied from an image by an init container, with the
service config's model_configs pointing into the mount. Rendered by `make chart`
(ci/user-models-values.yaml: lint --strict, template, kubernetes-validate --strict), then the
rendered config.yaml is read by the service's own loader and served over real gRPC with the
mount path pointed at a directory laid out as the docs say."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import yaml

import user_nets
from saliency.runtime.config import load_config
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, method, png_bytes

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "saliency"
HELM = ROOT / ".tools" / "helm" / "helm"
MOUNT = "/opt/saliency/user-models"


def helm_env() -> dict[str, str]:
    home = ROOT / ".tools" / "helm-home"
    return {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data")}


@pytest.fixture(scope="module")
def make_chart(tmp_path_factory) -> Path:
    """`make chart-check` (helm from `make tools`, which `make test` runs first); the
    directory of its renders."""
    out = tmp_path_factory.mktemp("chart-out")
    result = subprocess.run(["make", "-s", "chart-check", f"OUT={out}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"make chart failed:\n{result.stdout}\n{result.stderr}"
    return out / "chart"


def template(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HELM), "template", "saliency", str(CHART), "--kube-version", "1.30.0", *flags],
                          capture_output=True, text=True, env=helm_env(), timeout=60)


def docs_of(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def pod_of(docs: list[dict]) -> dict:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]


def config_yaml(docs: list[dict]) -> str:
    return next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])["data"]["config.yaml"]


def test_the_image_variant_copies_the_models_in_and_mounts_them_read_only(make_chart):
    docs = docs_of((make_chart / "user-models.yaml").read_text())
    pod = pod_of(docs)
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example.com/acme/saliency-models:2026-12-04"
    assert init["command"] == ["cp", "-R", "/models/.", "/user-models/"]
    assert init["securityContext"]["readOnlyRootFilesystem"] and init["securityContext"]["runAsNonRoot"]
    assert init["volumeMounts"] == [{"name": "user-models", "mountPath": "/user-models"}]
    (saliency,) = pod["containers"]
    assert {"name": "user-models", "mountPath": MOUNT, "readOnly": True} in saliency["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["user-models"] == {"name": "user-models", "emptyDir": {"sizeLimit": "2Gi"}}
    config = yaml.safe_load(config_yaml(docs))
    assert config["models"] == []
    assert config["model_configs"] == [f"{MOUNT}/my_resnet/my_resnet.yaml", f"{MOUNT}/my_vit/my_vit.yaml"]


def test_the_default_render_has_no_user_models(make_chart):
    docs = docs_of((make_chart / "default.yaml").read_text())
    pod = pod_of(docs)
    assert "initContainers" not in pod and "user-models" not in {v["name"] for v in pod["volumes"]}
    assert "model_configs" not in yaml.safe_load(config_yaml(docs))


def test_the_claim_variant_mounts_the_claim_read_only_and_validates(tmp_path):
    result = template("--set", "userModels.enabled=true", "--set", "userModels.existingClaim=acme-models",
                      "--set", "userModels.subPath=v3", "--set", "userModels.configs={my_resnet.yaml}")
    assert result.returncode == 0, result.stderr
    pod = pod_of(docs_of(result.stdout))
    assert "initContainers" not in pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["user-models"]["persistentVolumeClaim"] == {"claimName": "acme-models", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "user-models")
    assert mount == {"name": "user-models", "mountPath": MOUNT, "readOnly": True, "subPath": "v3"}
    # Beside the built-in model: config.models keeps its default.
    config = yaml.safe_load(config_yaml(docs_of(result.stdout)))
    assert config["models"] == ["efficientnet_lite0"] and config["model_configs"] == [f"{MOUNT}/my_resnet.yaml"]
    (tmp_path / "claim.yaml").write_text(result.stdout)
    validate = subprocess.run([str(ROOT / ".venv" / "bin" / "kubernetes-validate"), "--strict", "--quiet", "-k",
                               "1.30.0", str(tmp_path / "claim.yaml")], capture_output=True, text=True, timeout=120)
    assert validate.returncode == 0, validate.stdout + validate.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--set", "userModels.enabled=true", "--set", "userModels.existingClaim=c"], "configs"),
    (["--set", "userModels.enabled=true", "--set", "userModels.configs={a.yaml}"], "set exactly one of existingClaim"),
    (["--set", "userModels.enabled=true", "--set", "userModels.configs={a.yaml}", "--set", "userModels.existingClaim=c",
      "--set", "userModels.image.repository=r"], "set exactly one of existingClaim"),
    (["--set-json", "config.models=[]"], "no model to serve"),
    (["--set", "userModels.enabled=true", "--set", "userModels.configs={model.txt}", "--set",
      "userModels.existingClaim=c"], "userModels.configs"),
])
def test_a_user_models_setting_that_cannot_work_is_refused_by_the_chart(flags, message):
    result = template(*flags)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_rendered_config_serves_the_mounted_models_over_grpc(tmp_path):
    """The files laid out as docs/models.md says, the chart rendered with the mount there, its
    config.yaml loaded by the service's loader and served: the user's model answers Explain."""
    mount = tmp_path / "user-models"
    (mount / "my_resnet").mkdir(parents=True)
    shutil.copy(user_nets.__file__, mount / "my_resnet" / "nets.py")
    torch.manual_seed(0)
    torch.save(user_nets.randomise_batchnorm(user_nets.ResNetStyle()).eval().state_dict(),
               mount / "my_resnet" / "weights.pth")
    (mount / "my_resnet" / "my_resnet.yaml").write_text(yaml.safe_dump({
        "name": "my_resnet", "model": {"model_file": "nets.py", "class_name": "ResNetStyle"},
        "weights": "weights.pth", "input": {"size": [64, 64], "resize": "crop"},
        "labels": [f"kind {i}" for i in range(7)],
    }))
    result = template("-f", str(CHART / "ci" / "user-models-values.yaml"), "--set", f"userModels.mountPath={mount}",
                      "--set", "userModels.configs={my_resnet/my_resnet.yaml}")
    assert result.returncode == 0, result.stderr
    (tmp_path / "config.yaml").write_text(config_yaml(docs_of(result.stdout)))
    config = load_config(str(tmp_path / "config.yaml"), env={})
    assert config.models == ("my_resnet",) and config.model_configs == (str(mount / "my_resnet" / "my_resnet.yaml"),)
    running = ServiceThread(dataclasses.replace(config, host="127.0.0.1", port=0, metrics_host="127.0.0.1",
                                                metrics_port=0, http_port=0, max_chunk=8, max_chunk_forward=16))
    try:
        listed = running.stub().ListModels(pb.ListModelsRequest(), timeout=30).models
        assert [(m.name, m.resize) for m in listed] == [("my_resnet", "crop")]
        rgb = np.ascontiguousarray(skimage.data.chelsea())
        response = running.stub().Explain(pb.ExplainRequest(
            model="my_resnet", image=png_bytes(rgb), methods=[method(pb.METHOD_GRADCAM)],
            output=pb.OutputOptions(map_size=pb.MAP_SIZE_ORIGINAL)), timeout=60)
        assert response.predictions[0].label.startswith("kind ")
        assert list(response.attributions[0].map.shape) == [300, 451]
    finally:
        running.stop()


def test_with_torchserve_the_sidecar_archives_the_mounted_configs_before_it_starts(tmp_path):
    """backend: torchserve: the TorchServe container mounts the models too and runs
    `saliency.torchserve.store` with the rendered arguments before TorchServe. Run here
    with the chart's paths moved into tmp_path: it builds an archive per config beside a copy of
    the built-in one, and renders the chart's config.properties to serve them all."""
    mount = tmp_path / "user-models"
    (mount / "my_resnet").mkdir(parents=True)
    shutil.copy(user_nets.__file__, mount / "my_resnet" / "nets.py")
    torch.save(user_nets.ResNetStyle().state_dict(), mount / "my_resnet" / "weights.pth")
    (mount / "my_resnet" / "my_resnet.yaml").write_text(yaml.safe_dump({
        "name": "my_resnet", "model": {"model_file": "nets.py", "class_name": "ResNetStyle"},
        "weights": "weights.pth", "input": {"size": [64, 64]}}))
    result = template("--set", "backend=torchserve", "--set", "userModels.enabled=true",
                      "--set", "userModels.existingClaim=c", "--set", f"userModels.mountPath={mount}",
                      "--set", "userModels.configs={my_resnet/my_resnet.yaml}")
    assert result.returncode == 0, result.stderr
    docs = docs_of(result.stdout)
    pod = pod_of(docs)
    torchserve = next(c for c in pod["containers"] if c["name"] == "torchserve")
    mounts = {m["name"]: m for m in torchserve["volumeMounts"]}
    assert mounts["user-models"]["readOnly"] and mounts["torchserve-store"]["mountPath"] == "/var/lib/torchserve-store"
    assert {v["name"] for v in pod["volumes"]} >= {"user-models", "torchserve-store"}
    script = torchserve["command"][2]
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0
    assert "--model-store /var/lib/torchserve-store" in script and "--models $registrations" in script
    properties = next(d for d in docs if d["kind"] == "ConfigMap" and "config.properties" in d["data"])
    (tmp_path / "config.properties").write_text(properties["data"]["config.properties"])
    moved = {"/opt/saliency/model_store": str(ROOT / "model_store"),
             "/etc/torchserve/config.properties": str(tmp_path / "config.properties"),
             "/var/lib/torchserve-store": str(tmp_path / "store")}
    args = [moved.get(a, a) for a in torchserve["args"]]
    subprocess.run(["make", "-s", "models"], cwd=ROOT, check=True, timeout=900)
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "saliency.torchserve.store", *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["efficientnet_lite0=efficientnet_lite0.mar", "efficientnet_lite0-deep=efficientnet_lite0.mar",
                                   "my_resnet=my_resnet.mar", "my_resnet-deep=my_resnet.mar"]
    store = tmp_path / "store"
    assert {p.name for p in store.glob("*.mar")} == {"efficientnet_lite0.mar", "my_resnet.mar"}
    from saliency.torchserve.process import read_properties

    rendered = read_properties(store / "config.properties")
    assert rendered["model_store"] == str(store) and rendered["allowed_urls"] == f"file://{re.escape(str(store))}/.*"
    models = json.loads(rendered["models"])
    assert set(models) == {"efficientnet_lite0", "efficientnet_lite0-deep", "my_resnet", "my_resnet-deep"}
    assert models["my_resnet-deep"]["1.0"]["marName"] == "my_resnet.mar"
    assert rendered["inference_address"] == "http://127.0.0.1:8080"  # the chart's own settings stay
    # A config that cannot load stops the container before TorchServe, naming the field.
    (mount / "my_resnet" / "my_resnet.yaml").write_text(yaml.safe_dump({"name": "my_resnet", "model": {"model_file": "nets.py"}}))
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "saliency.torchserve.store",
                           *[a if a != str(tmp_path / "store") else str(tmp_path / "store2") for a in args]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "model.class_name" in done.stderr
