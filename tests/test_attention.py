"""The test ViT, attention rollout and raw attention: closed forms, an independent reference,
batch invariance, thread isolation, every other method on a ViT, and bad requests over gRPC."""

from __future__ import annotations

import copy
import dataclasses
import threading

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.fast import fast_pass
from saliency.attribution.methods.attention import discard_lowest, raw_attention, rollout
from saliency.attribution.registry import all_methods, check_supported, get_method, make_params
from saliency.attribution.types import Targets
from saliency.errors import InvalidArgument
from saliency.instrument.hooks import has_hooks
from saliency.models import LoadedModel, get_spec
from saliency.models.vit import build_vit
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, png_bytes, with_config
from test_hygiene import SMALL

ATTENTION = ("attention_rollout", "raw_attention")


def params(name: str, **values):
    return make_params(name, **values)


# ------------------------------------------------------------------ closed forms on a toy

# 1 CLS + 2 patches (a 1x2 grid). Layer 1 has one head, layer 2 two heads.
A1 = torch.tensor([[[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.0, 0.5, 0.5]]]])
A2 = torch.tensor(
    [[
        [[0.6, 0.2, 0.2], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]],
        [[0.2, 0.2, 0.6], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]],
    ]]
)


def test_rollout_of_a_two_layer_toy_by_hand():
    # A_hat_1 = (A1 + I) / 2 = [[.75, .125, .125], [.1, .8, .1], [0, .25, .75]]
    # mean over heads of A2, CLS row: [.4, .2, .4] -> A_hat_2 CLS row [.7, .1, .2]
    # R CLS row = [.7, .1, .2] @ A_hat_1 = [.535, .2175, .2475]
    r = rollout([A1, A2], params("attention_rollout"))
    torch.testing.assert_close(r[0, 0], torch.tensor([0.535, 0.2175, 0.2475]))
    torch.testing.assert_close(r.sum(-1), torch.ones(1, 3))  # rows stay distributions
    # max fusion: A2 CLS row [.6, .2, .6]; (row + e_0) / 2 = [.8, .1, .3], re-normalised by 1.2
    # -> [2/3, 1/12, 1/4]; @ A_hat_1 -> [.508333, .2125, .279167]
    r = rollout([A1, A2], params("attention_rollout", head_fusion="max"))
    torch.testing.assert_close(r[0, 0], torch.tensor([0.5 + 1 / 120, 0.2125, 0.0875 - 1 / 120 + 0.2]))
    # min fusion: CLS row [.2, .2, .2] -> [.6, .1, .1] / .8 = [.75, .125, .125] @ A_hat_1
    r = rollout([A1, A2], params("attention_rollout", head_fusion="min"))
    expected = torch.tensor([0.75, 0.125, 0.125]) @ (0.5 * A1[0, 0] + 0.5 * torch.eye(3))
    torch.testing.assert_close(r[0, 0], expected)
    # layer=0 stops after the first layer: A_hat_1's CLS row
    r = rollout([A1, A2], params("attention_rollout", layer=0))
    torch.testing.assert_close(r[0, 0], torch.tensor([0.75, 0.125, 0.125]))


def test_raw_attention_of_the_toy():
    assert raw_attention([A1, A2], params("raw_attention"))[0, 0, 1:].tolist() == pytest.approx([0.2, 0.4])
    assert raw_attention([A1, A2], params("raw_attention", layer=0))[0, 0, 1:].tolist() == [0.25, 0.25]
    assert raw_attention([A1, A2], params("raw_attention", head_fusion="max"))[0, 0].tolist() == pytest.approx([0.6, 0.2, 0.6])


def test_discard_zeroes_the_lowest_weights_but_never_cls_to_cls():
    # 9 weights, ratio 0.34 -> the 3 lowest (0, .2, .2) go; they are all outside the CLS row
    out = discard_lowest(A1[:, 0], 0.34)
    torch.testing.assert_close(out[0], torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.6, 0.0], [0.0, 0.5, 0.5]]))
    lowest_is_cls = torch.tensor([[[0.01, 0.5, 0.49], [0.3, 0.3, 0.4], [0.3, 0.3, 0.4]]])
    torch.testing.assert_close(discard_lowest(lowest_is_cls, 1 / 9), lowest_is_cls)
    # per image: a batch of two differs only where the images do
    pair = discard_lowest(torch.cat([A1[:, 0], lowest_is_cls]), 0.34)
    torch.testing.assert_close(pair[0], out[0])


def test_rollout_closed_forms_identity_and_uniform_attention():
    n, layers = 5, 3
    identity = torch.eye(n).expand(1, 2, n, n)
    r = rollout([identity] * layers, params("attention_rollout"))
    torch.testing.assert_close(r[0], torch.eye(n))  # nothing mixes: CLS row over patches is 0
    # uniform U = 11^T / n: A_hat = (U + I) / 2 and U^2 = U, so A_hat^L = 2^-L I + (1 - 2^-L) U
    uniform = torch.full((1, 2, n, n), 1 / n)
    r = rollout([uniform] * layers, params("attention_rollout"))
    torch.testing.assert_close(r[0, 0, 1:], torch.full((n - 1,), (1 - 0.5**layers) / n))


# ------------------------------------------------------------------ the ViT itself


@pytest.mark.slow
def test_vit_shapes_and_deterministic_random_weights(tiny_vit):
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert tiny_vit.module(x).shape == (2, 10)
    spec = get_spec("vit_ti16")
    assert (spec.architecture, spec.pretrained, spec.classifier_layer) == ("vit", False, "")
    assert "RANDOM weights" in spec.description and len(spec.attention_layers) == 6
    a, b, other = (m.state_dict() for m in (spec.build(), spec.build(), build_vit(224, 16, 192, 3, 6, 10, seed=1)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])


def reference_attention(model: LoadedModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's softmax(QK^T / sqrt(d)), recomputed from the block's input and weights
    (hooks of the test's own on a private copy); the model's attention output is checked to
    equal torch's fused scaled_dot_product_attention on the same q, k, v."""
    module = copy.deepcopy(model.module)
    inputs: list[torch.Tensor] = []
    handles = [b.attn.register_forward_hook(lambda m, i, o: inputs.append((m, i[0], o))) for b in module.blocks]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    probs = []
    with torch.no_grad():
        for attn, tokens, out in inputs:
            b, n, c = tokens.shape
            qkv = F.linear(tokens, attn.qkv.weight, attn.qkv.bias).view(b, n, 3, attn.heads, c // attn.heads)
            q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
            probs.append(torch.softmax(q @ k.transpose(-2, -1) / (c // attn.heads) ** 0.5, dim=-1))
            fused = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
            torch.testing.assert_close(attn.proj(fused), out, rtol=1e-4, atol=1e-5)
    return probs


def maps_by_method(results) -> dict:
    return {(b, a.method, a.target): a for b, r in enumerate(results) for a in r.attributions}


def test_maps_equal_an_independent_reference_on_the_vit(tiny_vit):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ref = reference_attention(tiny_vit, x)
    for p in ref:
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))  # rows are distributions
    methods = {"attention_rollout": params("attention_rollout"), "raw_attention": params("raw_attention")}
    results = fast_pass(tiny_vit, x, [Targets(top_k=2)] * 3, methods)
    got = maps_by_method(results)
    # raw: the last layer's head-mean CLS row over the 4x4 patch grid
    raw_ref = ref[-1].mean(1)[:, 0, 1:].reshape(3, 4, 4)
    # rollout: a plain loop over the layers
    rolled = torch.eye(17).expand(3, 17, 17)
    for p in ref:
        a = 0.5 * p.mean(1) + 0.5 * torch.eye(17)
        rolled = (a / a.sum(-1, keepdim=True)) @ rolled
    roll_ref = rolled[:, 0, 1:].reshape(3, 4, 4)
    for b, result in enumerate(results):
        for t in result.targets:  # class-agnostic: the same map for every target
            torch.testing.assert_close(got[b, "raw_attention", t].raw, raw_ref[b], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(got[b, "attention_rollout", t].raw, roll_ref[b], rtol=1e-4, atol=1e-6)
            up = F.interpolate(roll_ref[b][None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
            torch.testing.assert_close(got[b, "attention_rollout", t].map, up, rtol=1e-4, atol=1e-6)


def test_rollout_of_a_vit_with_uniform_attention_is_uniform(tiny_vit):
    module = copy.deepcopy(tiny_vit.module)
    with torch.no_grad():
        for block in module.blocks:  # q = k = 0 -> softmax of zeros: every weight 1 / 17
            block.attn.qkv.weight[: 2 * 32] = 0
            block.attn.qkv.bias[: 2 * 32] = 0
    model = LoadedModel(tiny_vit.spec, module, tiny_vit.device)
    (result,) = fast_pass(model, torch.randn(1, 3, 32, 32), [Targets()], {"attention_rollout": params("attention_rollout")})
    (attribution,) = result.attributions
    torch.testing.assert_close(attribution.raw, torch.full((4, 4), (1 - 0.5**2) / 17))


def test_batch_equals_one_image_at_a_time(tiny_vit):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    targets = [Targets(top_k=2), Targets(classes=(7,)), Targets(top_k=1)]
    methods = {
        "attention_rollout": params("attention_rollout", head_fusion="max", discard_ratio=0.3),
        "raw_attention": params("raw_attention", layer=0, discard_ratio=0.5),
        "gradcam": params("gradcam"),
    }
    batched = maps_by_method(fast_pass(tiny_vit, x, targets, methods))
    for b in range(3):
        alone = maps_by_method(fast_pass(tiny_vit, x[b : b + 1], targets[b : b + 1], methods))
        assert {k[1:] for k in batched if k[0] == b} == {k[1:] for k in alone}
        for key, a in alone.items():
            torch.testing.assert_close(batched[(b, *key[1:])].map, a.map, rtol=1e-4, atol=1e-6)


def test_attention_is_captured_only_when_asked_and_nothing_is_left_behind(tiny_vit):
    model = LoadedModel(tiny_vit.spec, copy.deepcopy(tiny_vit.module), tiny_vit.device)
    probs = model.module.blocks[0].attn.attn_probs
    calls = []
    original = probs.register_forward_hook

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    probs.register_forward_hook = spy  # on this test's own copy
    fast_pass(model, torch.randn(1, 3, 32, 32), [Targets()], {"gradcam": params("gradcam")})
    assert calls == []
    fast_pass(model, torch.randn(1, 3, 32, 32), [Targets()], {"raw_attention": params("raw_attention")})
    assert calls == [1]
    assert not has_hooks(model.module)


def test_two_threads_in_one_forward_each_get_their_own_attention(tiny_vit):
    module = copy.deepcopy(tiny_vit.module)
    barrier = threading.Barrier(2, timeout=30)

    class Meet(torch.nn.Module):  # both threads are inside the forward here, hooks of both set
        def forward(self, grid):
            barrier.wait()
            return grid

    module.patch_grid = Meet()
    model = LoadedModel(tiny_vit.spec, module, tiny_vit.device)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    methods = {"attention_rollout": params("attention_rollout"), "raw_attention": params("raw_attention")}
    expected = [maps_by_method(fast_pass(tiny_vit, x[i : i + 1], [Targets()], methods)) for i in range(2)]
    got: list = [None, None]
    errors: list = []

    def work(i: int) -> None:
        try:
            got[i] = maps_by_method(fast_pass(model, x[i : i + 1], [Targets()], methods))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for i in range(2):
        assert got[i].keys() == expected[i].keys()
        for key, a in expected[i].items():
            torch.testing.assert_close(got[i][key].raw, a.raw)


# ------------------------------------------------------------------ every method on a ViT


@pytest.mark.parametrize("method", sorted(all_methods()))
def test_every_method_explains_the_vit_or_is_refused_by_its_supports(tiny_vit, method):
    info = get_method(method)
    reason = info.unsupported_reason(tiny_vit.spec)
    if reason is not None:
        with pytest.raises(InvalidArgument) as refused:
            check_supported([method], tiny_vit.spec)
        assert refused.value.field == "methods" and reason in str(refused.value)
        return
    p = make_params(method, **SMALL.get(method, {}))
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(6))
    if info.kind == "fast":
        (result,) = fast_pass(tiny_vit, x[None], [Targets(classes=(2,))], {method: p})
        (attribution,) = result.attributions
    else:
        (attribution,) = ChunkExecutor(tiny_vit, ChunkSizes(4, 8)).run([info.plan(tiny_vit, x, 2, p)])
    assert attribution.map.shape == (32, 32) and torch.isfinite(attribution.map).all()
    assert not has_hooks(tiny_vit.module)


def test_cam_and_guided_methods_are_not_offered_for_the_vit():
    spec = get_spec("vit_ti16")
    for method in ("cam", "guided_backprop", "deconvnet", "guided_gradcam"):
        assert get_method(method).unsupported_reason(spec) is not None
    for method in ("gradcam", "gradcam_pp", "eigencam", "scorecam", "ig", *ATTENTION):
        assert get_method(method).unsupported_reason(spec) is None


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("method", ATTENTION)
def test_attention_methods_refuse_a_cnn_at_plan_time(tiny, method):
    assert get_method(method).unsupported_reason(tiny.spec) is not None
    with pytest.raises(InvalidArgument) as info:  # even if the registry check were skipped
        fast_pass(tiny, torch.randn(1, 3, 32, 32), [Targets()], {method: params(method)})
    assert info.value.field == method


def test_a_vit_spec_whose_module_lacks_its_attention_layers_is_refused(tiny_vit, tiny):
    liar = LoadedModel(tiny_vit.spec, tiny.module, tiny.device)
    with pytest.raises(InvalidArgument, match="has no layer") as info:
        fast_pass(liar, torch.randn(1, 3, 32, 32), [Targets()], {"raw_attention": params("raw_attention")})
    assert info.value.field == "raw_attention"


def test_an_attention_layer_that_is_not_attention_probabilities_is_refused(tiny_vit):
    spec = dataclasses.replace(tiny_vit.spec, attention_layers=("blocks.0.attn",))  # [B, N, C]
    model = LoadedModel(spec, tiny_vit.module, tiny_vit.device)
    with pytest.raises(InvalidArgument, match="expected one \\[batch, heads, tokens, tokens\\]"):
        fast_pass(model, torch.randn(1, 3, 32, 32), [Targets()], {"raw_attention": params("raw_attention")})
    assert not has_hooks(tiny_vit.module)


@pytest.mark.parametrize("method", ATTENTION)
def test_a_layer_beyond_the_models_depth_is_refused(tiny_vit, method):
    with pytest.raises(InvalidArgument, match="beyond this model's 2 attention layers") as info:
        fast_pass(tiny_vit, torch.randn(1, 3, 32, 32), [Targets()], {method: params(method, layer=2)})
    assert info.value.field == f"{method}.layer"
    assert not has_hooks(tiny_vit.module)


@pytest.fixture(scope="module")
def vit_service():
    service = ServiceThread(with_config(models=("tinycnn", "tinyvit")))
    yield service
    service.stop()


def tiny_png() -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def test_attention_maps_over_the_wire(vit_service):
    request = pb.ExplainRequest(
        model="tinyvit",
        image=tiny_png(),
        targets=pb.Targets(top_k=2),
        methods=[
            pb.MethodRequest(method=pb.METHOD_ATTENTION_ROLLOUT, attention=pb.AttentionParams(discard_ratio=0.2)),
            pb.MethodRequest(method=pb.METHOD_RAW_ATTENTION),
            pb.MethodRequest(method=pb.METHOD_GRADCAM),
        ],
    )
    response = vit_service.stub().Explain(request, timeout=60)
    kinds = sorted((a.method, a.target) for a in response.attributions)
    assert len(kinds) == 6 and {k[0] for k in kinds} == {
        pb.METHOD_ATTENTION_ROLLOUT, pb.METHOD_RAW_ATTENTION, pb.METHOD_GRADCAM,
    }
    models = {m.name: m for m in vit_service.stub().ListModels(pb.ListModelsRequest(), timeout=30).models}
    vit_methods = {m.method for m in models["tinyvit"].methods}
    assert {pb.METHOD_ATTENTION_ROLLOUT, pb.METHOD_RAW_ATTENTION} <= vit_methods
    assert pb.METHOD_CAM not in vit_methods and not models["tinyvit"].pretrained
    assert pb.METHOD_ATTENTION_ROLLOUT not in {m.method for m in models["tinycnn"].methods}


@pytest.mark.parametrize(
    ("model", "request_method", "field"),
    [
        ("tinycnn", pb.MethodRequest(method=pb.METHOD_ATTENTION_ROLLOUT), "methods[1].method"),
        ("tinyvit", pb.MethodRequest(method=pb.METHOD_CAM), "methods[1].method"),
        ("tinyvit", pb.MethodRequest(method=pb.METHOD_RAW_ATTENTION, attention=pb.AttentionParams(discard_ratio=1.0)),
         "methods[1].attention.discard_ratio"),
        ("tinyvit", pb.MethodRequest(method=pb.METHOD_RAW_ATTENTION, attention=pb.AttentionParams(layer=-2)),
         "methods[1].attention.layer"),
        ("tinyvit", pb.MethodRequest(method=pb.METHOD_ATTENTION_ROLLOUT, attention=pb.AttentionParams(head_fusion=9)),
         "methods[1].attention.head_fusion"),
        ("tinyvit", pb.MethodRequest(method=pb.METHOD_ATTENTION_ROLLOUT, attention=pb.AttentionParams(layer=2)),
         "attention_rollout.layer"),
        ("tinyvit", pb.MethodRequest(method=pb.METHOD_ATTENTION_ROLLOUT, cam=pb.CamParams()), "methods[1].cam"),
    ],
)
def test_bad_attention_requests_over_the_wire(vit_service, model, request_method, field):
    request = pb.ExplainRequest(
        model=model, image=tiny_png(), methods=[pb.MethodRequest(method=pb.METHOD_GRADCAM), request_method]
    )
    with pytest.raises(grpc.RpcError) as info:
        vit_service.stub().Explain(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}:"), info.value.details()
    # and the service still serves
    ok = pb.ExplainRequest(model=model, image=tiny_png(), methods=[pb.MethodRequest(method=pb.METHOD_GRADCAM)])
    assert vit_service.stub().Explain(ok, timeout=60).attributions


def test_cli_writes_attention_and_gradcam_images_for_the_vit(tmp_path, capsys):
    from saliency.cli import main

    out = tmp_path / "out"
    argv = ["explain", "--sample", "chelsea", "--model", "tinyvit", "--methods",
            "attention_rollout,raw_attention,gradcam", "--param", "attention_rollout.head_fusion=max",
            "--out", str(out)]
    assert main(argv) == 0
    maps = {p.name.rsplit("_", 1)[0] for p in out.glob("*_*.png")}  # <method>_<class>.png
    assert maps == {"attention_rollout", "raw_attention", "gradcam"}
    assert main(["explain", "--sample", "chelsea", "--model", "tinycnn", "--methods", "raw_attention",
                 "--out", str(tmp_path / "refused")]) != 0
    assert "raw_attention cannot explain model tinycnn" in capsys.readouterr().err
