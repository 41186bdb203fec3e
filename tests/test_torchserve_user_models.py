"""User models on the TorchServe backend: `saliency archive` packs a model config (its model
code or program, weights and labels) with the handler into a .mar, and `saliency serve
--backend torchserve --model-config ...` serves such archives from a real TorchServe. Maps are
compared with the in-process engine on the user's model loaded from the same config."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml

import user_nets
from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.registry import make_params
from saliency.attribution.types import Targets
from saliency.cli import main
from saliency.codec import convert, method_params, tensors
from saliency.models import load_model_config
from saliency.models.config import read_model_config
from saliency.torchserve.archive import ARCHIVED_CONFIG
from saliency.torchserve.batch import HandlerSettings
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
NETS = str(Path(user_nets.__file__).resolve())
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17 (java on PATH)")


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    """A ResNet-style CNN from a model file with .pth weights and a labels file, and a
    TorchScript module: both sources whose files the archive must carry."""
    d = tmp_path_factory.mktemp("user_models")
    torch.manual_seed(0)
    resnet = user_nets.randomise_batchnorm(user_nets.ResNetStyle(num_classes=7)).eval()
    torch.save(resnet.state_dict(), d / "resnet.pth")
    smooth = user_nets.randomise_batchnorm(user_nets.SmoothCNN(), 1).eval()
    torch.jit.save(torch.jit.script(smooth), d / "smooth_script.pt")
    (d / "labels.txt").write_text("".join(f"kind {i}\n" for i in range(7)))
    files = {
        "ts_resnet": {"model": {"model_file": NETS, "class_name": "ResNetStyle", "kwargs": {"num_classes": 7}},
                      "weights": "resnet.pth", "labels": "labels.txt", "input": {"size": [64, 64]}},
        "ts_script": {"model": {"torchscript": "smooth_script.pt"}, "input": {"size": [32, 32]}},
    }
    paths = {}
    for name, config in files.items():
        paths[name] = d / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({"name": name, **config}))
    return paths


@pytest.mark.integration  # `saliency archive` runs torch-model-archiver in a subprocess
def test_archive_packs_the_handler_the_config_and_copies_of_its_files(configs, tmp_path, capsys):
    assert main(["archive", str(configs["ts_resnet"]), "--out", str(tmp_path / "store")]) == 0
    mar = tmp_path / "store" / "ts_resnet.mar"
    assert str(mar) in capsys.readouterr().out
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        ts_config = yaml.safe_load(archive.read(manifest["model"]["configFile"]))
        archive.extractall(tmp_path / "unpacked")
    assert manifest["model"]["handler"] == "handler.py"
    assert {"handler.py", ARCHIVED_CONFIG, "saliency_model/user_nets.py", "saliency_model/resnet.pth"} <= names
    settings = HandlerSettings.from_model_config(ts_config, default_model="ts_resnet")
    assert (settings.model, settings.model_config) == ("ts_resnet", ARCHIVED_CONFIG)
    assert set(settings.registrations) == {"fast", "deep"}
    # The packed config reads on its own, anywhere it is unpacked: the same model, the same
    # labels (written in), the same weights.
    packed = read_model_config(tmp_path / "unpacked" / ARCHIVED_CONFIG)
    original = read_model_config(configs["ts_resnet"])
    assert (packed.name, packed.class_name, packed.kwargs, packed.labels) == (
        original.name, original.class_name, original.kwargs, original.labels)
    assert packed.weights.read_bytes() == original.weights.read_bytes()
    assert Path(packed.location).read_text() == Path(original.location).read_text()


@pytest.mark.integration  # `saliency archive` runs torch-model-archiver in a subprocess
def test_archive_of_a_torchscript_module_carries_the_program(configs, tmp_path):
    assert main(["archive", str(configs["ts_script"]), "--out", str(tmp_path)]) == 0
    with zipfile.ZipFile(tmp_path / "ts_script.mar") as archive:
        assert "saliency_model/smooth_script.pt" in archive.namelist()
        packed = yaml.safe_load(archive.read(ARCHIVED_CONFIG))
    assert packed["model"] == {"torchscript": "smooth_script.pt"}


def test_archive_refuses_a_bad_config_naming_the_field(configs, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "model": {"model_file": NETS}}))
    assert main(["archive", str(bad), "--out", str(tmp_path / "store")]) == 2
    assert "model.class_name" in capsys.readouterr().err
    assert not (tmp_path / "store" / "bad.mar").exists()


def test_archive_into_a_path_that_is_not_a_directory_is_a_usage_error(configs, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(["archive", str(configs["ts_resnet"]), "--out", str(tmp_path / "a_file")]) == 2
    assert "a_file" in capsys.readouterr().err


def test_archive_refuses_torchserve_settings_that_name_the_model(configs, tmp_path, capsys):
    settings = tmp_path / "ts.yaml"
    settings.write_text(yaml.safe_dump({"saliency": {"model": "efficientnet_lite0"}}))
    assert main(["archive", str(configs["ts_resnet"]), "--out", str(tmp_path), "--torchserve-config", str(settings)]) == 2
    assert "saliency.model is set by `saliency archive`" in capsys.readouterr().err
    settings.write_text(yaml.safe_dump({"saliency": {"registrations": {"fast": {"batchSize": 4}, "slow": {}}}}))
    assert main(["archive", str(configs["ts_resnet"]), "--out", str(tmp_path), "--torchserve-config", str(settings)]) == 2
    assert "registrations" in capsys.readouterr().err


def _request(model: str, x: torch.Tensor, methods: dict) -> pb.ExplainRequest:
    request = pb.ExplainRequest(
        model=model, targets=convert.targets_to_proto(Targets()),
        methods=method_params.method_requests_to_proto(methods),
    )
    request.tensor.CopyFrom(tensors.tensor_to_proto(x))
    return request


@needs_java
def test_serve_torchserve_explains_user_models_from_their_configs(configs):
    """`saliency serve --backend torchserve --model-config A --model-config B`: archives are
    built at start into TorchServe's own store; every map equals the engine's on the user's model."""
    server = ServerProcess(
        "--backend", "torchserve",
        "--model-config", str(configs["ts_resnet"]), "--model-config", str(configs["ts_script"]),
        "--torchserve-model-store", str(ROOT / "model_store"),
        "--torchserve-config", str(ROOT / "deploy" / "torchserve" / "config.properties"),
        ready_timeout=300,
    )
    try:
        stub = server.stub()
        listed = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models}
        assert {"ts_resnet", "ts_script"} <= set(listed)
        for name, size, methods in (
            ("ts_resnet", 64, {"gradcam": None, "vanilla": None, "ig": {"n_steps": 8}}),
            ("ts_script", 32, {"vanilla": None, "ig": {"n_steps": 8}}),
        ):
            x = torch.randn(3, size, size, generator=torch.Generator().manual_seed(5))
            response = stub.Explain(_request(name, x, methods), timeout=120)
            loaded = load_model_config(configs[name])
            params = {m: make_params(m, **(p or {})) for m, p in methods.items()}
            local = Engine(loaded, ChunkSizes(8, 16)).explain(x, Targets(), params)
            assert [p.class_index for p in response.predictions][:1] == [int(local.predictions[0].class_index)]
            got = {(a.method, a.target): a for a in response.attributions}
            assert len(got) == len(local.attributions) == len(methods)
            for a in local.attributions:
                served = got[method_params.method_enum(a.method), a.target].map
                values = np.frombuffer(served.data, dtype=np.float32).reshape(tuple(served.shape))
                np.testing.assert_allclose(values, a.map.numpy(), rtol=1e-4, atol=1e-6, err_msg=f"{name} {a.method}")
        resnet = stub.Explain(_request("ts_resnet", torch.zeros(3, 64, 64), {"vanilla": None}), timeout=60)
        assert resnet.predictions[0].label.startswith("kind ")
        # A method the model cannot support is refused with the probe's reason, before TorchServe.
        with pytest.raises(grpc.RpcError) as refused:
            stub.Explain(_request("ts_script", torch.zeros(3, 32, 32), {"gradcam": None}), timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "gradcam cannot explain model ts_script" in refused.value.details()
    finally:
        server.stop()
