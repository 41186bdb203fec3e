"""Occlusion, CAM, Score-CAM, guided backpropagation, deconvnet and Guided Grad-CAM against
Captum, closed forms and formulas written independently here; the executor's rule grouping and
two-phase streams; modified backward rules that never leak to another thread."""

from __future__ import annotations

import copy
import dataclasses
import threading

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, Occlusion
from torch import nn

from helpers import LinearModel, wrap
from saliency.attribution.executor import (
    ChunkExecutor,
    ChunkOutput,
    ChunkSizes,
    DeepPlan,
    DeepTask,
    SampleStream,
)
from saliency.attribution.fast import fast_pass
from saliency.attribution.limits import Limits
from saliency.attribution.methods.occlusion import plan_occlusion
from saliency.attribution.registry import get_method, make_params
from saliency.attribution.types import Attribution, Targets
from saliency.errors import InvalidArgument
from saliency.instrument.hooks import backward_rule, has_hooks, resolve_layer
from saliency.models import LoadedModel, get_spec
from saliency.models.tinycnn import TinyCNN, build_tinycnn


def run(model, x, target, method, chunk=(4, 8), **params) -> Attribution:
    task = get_method(method).plan(model, x, target, make_params(method, **params))
    (result,) = ChunkExecutor(model, ChunkSizes(*chunk)).run([task])
    return result


def fast_maps(model, x, classes, methods) -> dict[tuple[str, int], Attribution]:
    chosen = {m: make_params(m) for m in methods}
    (result,) = fast_pass(model, x[None], [Targets(classes=classes)], chosen)
    return {(a.method, a.target): a for a in result.attributions}


# ----------------------------------------------------------------------------------- occlusion


@pytest.mark.parametrize(("window", "stride", "baseline"), [(8, 8, 0.0), (6, 4, 0.5), (5, 3, -1.0)])
def test_occlusion_matches_captum(tiny, tiny_images, window, stride, baseline):
    """(6, 4) and (5, 3) do not tile 32 pixels: the last window runs past the border."""
    x = tiny_images[1]
    ours = run(tiny, x, 2, "occlusion", window=window, stride=stride, baseline=baseline)
    ref = Occlusion(tiny.module).attribute(
        x[None],
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=baseline,
        target=2,
        perturbations_per_eval=16,
    )[0]
    assert torch.equal(ref[0], ref[1]) and torch.equal(ref[0], ref[2])  # full-channel windows
    torch.testing.assert_close(ours.map, ref[0], rtol=1e-4, atol=2e-5)
    n_side = -(-(32 - window) // stride) + 1
    assert ours.stats["windows"] == n_side**2


def test_occlusion_of_single_pixels_on_a_linear_model_is_exact():
    """F(x) - F(x with pixel (i, j) set to b in every channel) = sum_c W[c, i, j] (x - b)."""
    model = wrap(LinearModel(), (8, 8), 4, "features")
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(2))
    result = run(model, x, 3, "occlusion", window=1, stride=1, baseline=0.25)
    w = model.module.fc.weight[3].detach().view(3, 8, 8)
    torch.testing.assert_close(result.map, (w * (x - 0.25)).sum(0), rtol=1e-4, atol=1e-5)


def test_occlusion_checks_the_window_against_the_input(tiny, tiny_images):
    with pytest.raises(InvalidArgument) as info:
        plan_occlusion(tiny, tiny_images[0], 0, make_params("occlusion", window=33, stride=8))
    assert info.value.field == "occlusion.window"
    with pytest.raises(InvalidArgument) as info:
        plan_occlusion(
            tiny, tiny_images[0], 0, make_params("occlusion", window=4, stride=1),
            limits=Limits(max_occlusion_windows=100),
        )
    assert info.value.field == "occlusion.stride" and "841 window positions" in str(info.value)


# ----------------------------------------------------------------------------------------- CAM


@pytest.fixture(params=["tiny", "effnet"])
def model_and_input(request, tiny_images, chelsea):
    if request.param == "tiny":
        return request.getfixturevalue("tiny"), tiny_images[0], (0, 3, 7)
    return request.getfixturevalue("effnet"), chelsea, (285, 281, 0)


def test_cam_is_gradcam_up_to_a_positive_scale_on_a_gap_linear_head(model_and_input):
    """On GAP + linear, dS_c/dA_k = W[c, k] / (h w) everywhere: Grad-CAM = ReLU(CAM) / (h w)."""
    model, x, classes = model_and_input
    maps = fast_maps(model, x, classes, ("cam", "gradcam"))
    for c in classes:
        cam, gradcam = maps["cam", c].raw, maps["gradcam", c].raw
        h, w = cam.shape
        torch.testing.assert_close(torch.relu(cam) / (h * w), gradcam, rtol=1e-4, atol=1e-7)
        assert maps["cam", c].map.shape == x.shape[-2:]
    # Signed: the evidence against a class is kept (Grad-CAM's ReLU drops it).
    assert any(float(maps["cam", c].raw.min()) < 0 for c in classes)


def test_cam_mean_plus_bias_is_the_logit(model_and_input):
    model, x, classes = model_and_input
    maps = fast_maps(model, x, classes, ("cam",))
    with torch.inference_mode():
        logits = model.module(x[None])[0]
    fc = resolve_layer(model.module, model.spec.classifier_layer)
    for c in classes:
        total = float(maps["cam", c].raw.mean() + fc.bias[c])
        assert total == pytest.approx(float(logits[c]), rel=1e-4, abs=1e-4)


class MaxPoolHead(nn.Module):
    """conv -> ReLU -> global MAX pool -> linear: not a CAM architecture."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.features = nn.ReLU()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_max_pool2d(self.features(self.conv(x)), 1), 1))


def with_classifier(model: LoadedModel, layer: str) -> LoadedModel:
    return LoadedModel(dataclasses.replace(model.spec, classifier_layer=layer), model.module, model.device)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("fc", "not global-average-pool \\+ linear"),
        ("", "declares no global-average-pool"),
        ("conv", "is a Conv2d, not nn.Linear"),
        ("nope", "no layer named"),
    ],
)
def test_cam_refuses_models_without_a_gap_linear_head(layer, message):
    model = with_classifier(wrap(MaxPoolHead(), (16, 16), 5, "features"), layer)
    with pytest.raises(InvalidArgument, match=message) as info:
        fast_maps(model, torch.randn(3, 16, 16), (1,), ("cam",))
    assert info.value.field == "cam"


# ----------------------------------------------------------------------------------- Score-CAM


def scorecam_reference(tiny, x, target, weighting, max_channels):
    """Score-CAM one channel and one forward at a time, activations computed by hand."""
    m = tiny.module
    with torch.no_grad():
        acts = m.features_act(m.conv3(m.act2(m.bn2(m.conv2(m.act1(m.conv1(x[None])))))))[0]
        means = {k: float(acts[k].mean()) for k in range(len(acts)) if acts[k].max() > acts[k].min()}
        kept = sorted(means, key=lambda k: (-means[k], k))[:max_channels]
        scores = []
        for k in kept:
            up = F.interpolate(acts[k][None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            mask = (up - up.min()) / (up.max() - up.min())
            logits = m((x * mask)[None])[0].double()
            scores.append(logits[target] if weighting == "channel_softmax" else logits.softmax(0)[target])
        scores = torch.stack(scores)
        weights = scores.softmax(0) if weighting == "channel_softmax" else scores
        cam = sum(float(w) * acts[k] for w, k in zip(weights, kept))
    return torch.relu(cam), len(kept)


@pytest.mark.parametrize("weighting", ["channel_softmax", "class_probability"])
@pytest.mark.parametrize("max_channels", [256, 5])
def test_scorecam_matches_an_independent_formula(tiny, tiny_images, weighting, max_channels):
    x = tiny_images[2]
    params = make_params("scorecam", max_channels=max_channels, weighting=weighting)
    task = get_method("scorecam").plan(tiny, x, 4, params)
    assert task.n_samples == 1 + min(max_channels, 16)  # bounded by the classifier's 16 inputs
    (ours,) = ChunkExecutor(tiny, ChunkSizes(4, 8)).run([task])
    ref, kept = scorecam_reference(tiny, x, 4, weighting, max_channels)
    assert ours.stats["channels"] == kept and ours.stats["samples"] == kept + 1
    torch.testing.assert_close(ours.raw, ref, rtol=1e-4, atol=1e-6)
    up = F.interpolate(ref[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(ours.map, up, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------- guided backprop, deconvnet, Guided Grad-CAM


@pytest.mark.parametrize(("method", "captum"), [("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)])
def test_modified_backprop_matches_captum_on_relu(tiny, tiny_images, method, captum):
    for x, target in zip(tiny_images, (1, 5, 8)):
        ours = run(tiny, x, target, method)
        ref = captum(tiny.module).attribute(x[None].clone(), target=target)[0]
        torch.testing.assert_close(ours.raw, ref, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(ours.map, ref.abs().amax(0), rtol=1e-5, atol=1e-8)
        xg = x[None].clone().requires_grad_(True)
        (plain,) = torch.autograd.grad(tiny.module(xg)[0, target], xg)
        assert not torch.allclose(ours.raw, plain[0], atol=1e-6)  # the rule really acted


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_guided_gradcam_matches_captum(tiny, tiny_images, interpolation):
    layer = resolve_layer(tiny.module, tiny.spec.target_layer)
    for x, target in zip(tiny_images, (2, 9)):
        ours = run(tiny, x, target, "guided_gradcam", interpolation=interpolation, reduction="sum")
        ref = GuidedGradCam(tiny.module, layer).attribute(
            x[None].clone(), target=target, interpolate_mode=interpolation
        )[0]
        torch.testing.assert_close(ours.raw, ref, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(ours.map, ref.sum(0), rtol=1e-4, atol=1e-8)


class _ReferenceRule(torch.autograd.Function):
    """Written from the definitions with the forward INPUT's mask (ours uses the output's)."""

    @staticmethod
    def forward(ctx, x, upper, rule):
        ctx.save_for_backward(x)
        ctx.upper, ctx.rule = upper, rule
        return x.clamp(min=0) if upper is None else x.clamp(0, upper)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            return torch.where(g > 0, g, torch.zeros_like(g)), None, None
        inside = x > 0 if ctx.upper is None else (x > 0) & (x < ctx.upper)
        return torch.where(inside & (g > 0), g, torch.zeros_like(g)), None, None


class _ReferenceActivation(nn.Module):
    def __init__(self, upper, rule):
        super().__init__()
        self.upper, self.rule = upper, rule

    def forward(self, x):
        return _ReferenceRule.apply(x, self.upper, self.rule)


def reference_gradient(module: nn.Module, x: torch.Tensor, target: int, rule: str) -> torch.Tensor:
    """The input gradient of a COPY whose ReLU / ReLU6 modules are swapped for the reference."""
    twin = copy.deepcopy(module)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, _ReferenceActivation(6.0, rule))
            elif isinstance(child, nn.ReLU):
                setattr(parent, name, _ReferenceActivation(None, rule))
    xg = x[None].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(twin(xg)[0, target], xg)
    return grad[0]


@pytest.mark.parametrize(("method", "rule"), [("guided_backprop", "guided"), ("deconvnet", "deconvnet")])
def test_modified_backprop_on_relu6_matches_a_reference(effnet, chelsea, method, rule):
    """EfficientNet-Lite0 is all ReLU6, which Captum's rules leave alone."""
    ours = run(effnet, chelsea, 285, method, chunk=(1, 1))
    ref = reference_gradient(effnet.module, chelsea, 285, rule)
    torch.testing.assert_close(ours.raw, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
    xg = chelsea[None].clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(effnet.module(xg)[0, 285], xg)
    assert (ours.raw - plain[0]).abs().max() > 0.1 * plain.abs().max()


class InPlaceNet(nn.Module):
    """In-place ReLU and ReLU6 modules plus a functional relu: every spelling the rule covers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.act2 = nn.ReLU6(inplace=True)
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        x = self.act2(3 * self.conv2(self.act1(self.conv1(x))))
        return self.fc(torch.flatten(F.relu(x - 1), 1))


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_backward_rule_covers_in_place_and_functional_rectifiers(rule):
    model = InPlaceNet().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    xg = x.clone().requires_grad_(True)
    with backward_rule(rule):
        out = model(xg)
    torch.testing.assert_close(out, model(x))  # the forward is unchanged
    (ours,) = torch.autograd.grad(out[0, 2], xg)
    twin = copy.deepcopy(model)
    twin.act1, twin.act2 = _ReferenceActivation(None, rule), _ReferenceActivation(6.0, rule)
    twin_forward = twin.forward

    def forward_with_reference_relu(inp):  # the functional relu, replaced the same way
        h = twin.act2(3 * twin.conv2(twin.act1(twin.conv1(inp))))
        return twin.fc(torch.flatten(_ReferenceRule.apply(h - 1, None, rule), 1))

    twin.forward = forward_with_reference_relu
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(twin(xr)[0, 2], xr)
    twin.forward = twin_forward
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    xp = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(xp)[0, 2], xp)
    assert not torch.allclose(ours, plain)


def test_backward_rule_ends_with_its_context_even_on_error(tiny, tiny_images):
    x = tiny_images[0][None]
    with pytest.raises(RuntimeError, match="inside"), backward_rule("guided"):
        raise RuntimeError("inside")
    xg = x.clone().requires_grad_(True)
    (after,) = torch.autograd.grad(tiny.module(xg)[0, 1], xg)
    xp = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(tiny.module(xp)[0, 1], xp)
    torch.testing.assert_close(after, plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown backward rule"), backward_rule("lrp"):
        pass


class RendezvousCNN(TinyCNN):
    """TinyCNN whose forward waits, after its first ReLU, until a second forward arrives, so two
    threads' forwards (and the rest of their ReLUs) are in flight at the same time."""

    barrier: threading.Barrier
    saw_hooks: list

    def forward(self, x):
        x = self.act1(self.conv1(x))
        self.barrier.wait(timeout=20)
        self.saw_hooks.append(has_hooks(self))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.features_act(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_a_guided_request_never_leaks_into_a_concurrent_plain_one(tiny_images):
    """Same model object, same image and class, two threads whose forwards overlap: the guided
    request gets the guided map and the vanilla request the plain gradient, and nothing is
    attached to the model meanwhile."""
    module = RendezvousCNN().eval()
    module.load_state_dict(build_tinycnn().state_dict())
    module.barrier, module.saw_hooks = threading.Barrier(2), []
    model = LoadedModel(get_spec("tinycnn"), module, torch.device("cpu"))
    modules_before = [id(m) for m in module.modules()]
    x, target = tiny_images[1], 6
    results, errors = {}, []

    def guided():
        task = get_method("guided_backprop").plan(model, x, target, make_params("guided_backprop"))
        results["guided"] = ChunkExecutor(model, ChunkSizes(2, 2)).run([task])[0].raw

    def vanilla():
        results["vanilla"] = fast_maps(model, x, (target,), ("vanilla",))["vanilla", target].raw

    def guard(job):
        try:
            job()
        except Exception as exc:  # reported below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(job,)) for job in (guided, vanilla)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    plain_model = build_tinycnn()
    ref_guided = GuidedBackprop(plain_model).attribute(x[None].clone(), target=target)[0]
    xg = x[None].clone().requires_grad_(True)
    (ref_plain,) = torch.autograd.grad(plain_model(xg)[0, target], xg)
    torch.testing.assert_close(results["guided"], ref_guided, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(results["vanilla"], ref_plain[0].abs(), rtol=1e-5, atol=1e-8)
    assert not torch.allclose(ref_guided, ref_plain[0], atol=1e-6)
    assert module.saw_hooks == [False, False]
    assert [id(m) for m in module.modules()] == modules_before and not has_hooks(module)


# ---------------------------------------------------------------------------------- executor


def test_chunks_never_mix_backward_rules(tiny, tiny_images):
    seen = []
    executor = ChunkExecutor(tiny, ChunkSizes(grad=3, forward=8))
    original = executor._evaluate

    def spy(inputs, targets, needs_grad, **extras):
        seen.append((len(inputs), needs_grad, extras.get("backward_rule"), extras.get("capture_layer", False)))
        return original(inputs, targets, needs_grad, **extras)

    executor._evaluate = spy
    plans = [
        ("guided_backprop", {}), ("ig", {"n_steps": 4}), ("deconvnet", {}), ("guided_gradcam", {}),
        ("guided_backprop", {}), ("deconvnet", {}), ("guided_gradcam", {}), ("guided_backprop", {}),
    ]
    tasks = [
        get_method(m).plan(tiny, tiny_images[i % 3], i, make_params(m, **p)) for i, (m, p) in enumerate(plans)
    ]
    executor.run(tasks)
    assert all(n <= (3 if grad else 8) for n, grad, *_ in seen)
    by_rule = {}
    for n, grad, rule, _ in seen:
        by_rule[rule, grad] = by_rule.get((rule, grad), 0) + n
    # guided: 3 guided_backprop + 2 Guided Grad-CAM halves; plain: IG's 4 steps + 2 Grad-CAM halves
    assert by_rule == {("guided", True): 5, ("deconvnet", True): 2, (None, True): 6, (None, False): 2}
    assert any(capture for n, grad, rule, capture in seen if rule is None and grad)
    assert not any(capture for n, grad, rule, capture in seen if rule is not None)
    # Packed: 5 guided samples in 2 chunks of <= 3, not one chunk per request.
    assert sum(1 for _, _, rule, _ in seen if rule == "guided") == 2


def test_a_second_phase_waits_for_the_first_and_may_shrink():
    model = wrap(LinearModel(), (8, 8), 4, "features")
    x = torch.randn(3, 8, 8)
    log = []

    def inputs(name):
        def make(start, stop):
            log.append((name, start, stop))
            return x.expand(stop - start, -1, -1, -1)

        return make

    def consume_first(start, out: ChunkOutput):
        assert out.layer is not None and out.layer.shape == (1, 3, 8, 8)
        second.n_samples = 2  # planned from the first phase's output

    first = SampleStream(1, False, inputs("first"), consume_first, capture_layer=True)
    second = SampleStream(10, False, inputs("second"), lambda s, o: None, after=first)
    filler = SampleStream(6, False, inputs("filler"), lambda s, o: None)
    task = DeepTask(DeepPlan("two-phase", 0, [first, second], lambda: Attribution("two-phase", 0, torch.zeros(8, 8))))
    other = DeepPlan("filler", 0, [filler], lambda: Attribution("filler", 0, torch.zeros(8, 8)))
    executor = ChunkExecutor(model, ChunkSizes(4, 4))
    executor.run([task, other])
    assert log[:2] == [("first", 0, 1), ("filler", 0, 3)]  # the second phase could not join
    assert ("second", 0, 2) in log and task.result is not None and task.n_samples == 3

    empty_first = SampleStream(1, False, inputs("first"), lambda s, o: setattr(empty_second, "n_samples", 0))
    empty_second = SampleStream(5, False, inputs("never"), lambda s, o: None, after=empty_first)
    nothing = DeepTask(DeepPlan("empty", 0, [empty_first, empty_second], lambda: Attribution("empty", 0, torch.zeros(8, 8))))
    executor.run([nothing])
    assert nothing.result is not None and not any(name == "never" for name, *_ in log)

    stranger = SampleStream(1, False, inputs("x"), lambda s, o: None, after=filler)
    with pytest.raises(ValueError, match="earlier stream of its own task"):
        executor.submit(DeepPlan("bad", 0, [stranger], lambda: None))


def test_a_rule_on_a_forward_only_stream_is_refused():
    with pytest.raises(ValueError, match="gradient stream"):
        SampleStream(1, False, lambda a, b: None, lambda s, o: None, backward_rule="guided")
    with pytest.raises(ValueError, match="unknown backward rule"):
        SampleStream(1, True, lambda a, b: None, lambda s, o: None, backward_rule="lrp")


# ------------------------------------------------------------------------------ bad parameters


@pytest.mark.parametrize(
    ("method", "values", "field"),
    [
        ("occlusion", {"window": 0}, "occlusion.window"),
        ("occlusion", {"window": 4096}, "occlusion.window"),
        ("occlusion", {"stride": 0}, "occlusion.stride"),
        ("occlusion", {"stride": 5000}, "occlusion.stride"),
        ("occlusion", {"window": 8, "stride": 9}, "occlusion.stride"),
        ("occlusion", {"baseline": float("nan")}, "occlusion.baseline"),
        ("occlusion", {"baseline": 1e6}, "occlusion.baseline"),
        ("scorecam", {"max_channels": 0}, "scorecam.max_channels"),
        ("scorecam", {"max_channels": 10**6}, "scorecam.max_channels"),
        ("scorecam", {"weighting": "mean"}, "scorecam.weighting"),
        ("guided_backprop", {"reduction": "mean"}, "guided_backprop.reduction"),
        ("deconvnet", {"reduction": "mean"}, "deconvnet.reduction"),
        ("guided_gradcam", {"reduction": "mean"}, "guided_gradcam.reduction"),
        ("guided_gradcam", {"interpolation": "bicubic"}, "guided_gradcam.interpolation"),
        ("cam", {"layer": "fc"}, "cam.params"),
    ],
)
def test_absurd_parameters_name_their_field(method, values, field):
    with pytest.raises(InvalidArgument) as info:
        make_params(method, **values)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_limits_bound_scorecam_channels():
    make_params("scorecam", Limits(max_scorecam_channels=8), max_channels=8)
    with pytest.raises(InvalidArgument, match="outside \\[1, 8\\]"):
        make_params("scorecam", Limits(max_scorecam_channels=8), max_channels=9)
