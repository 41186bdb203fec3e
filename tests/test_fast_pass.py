"""The fast pass against Captum and against formulas written independently here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, LayerAttribution, LayerGradCam, Saliency

from saliency.attribution.fast import fast_pass
from saliency.attribution.registry import all_methods, example_params, get_method, make_params
from saliency.attribution.types import Targets
from saliency.instrument.hooks import resolve_layer

FAST = ("vanilla", "input_x_gradient", "gradcam", "gradcam_pp", "eigencam")


def run_fast(model, x, targets, methods=FAST, **params):
    chosen = {m: make_params(m, **params.get(m, {})) for m in methods}
    (result,) = fast_pass(model, x[None], [targets], chosen)
    return result, {(a.method, a.target): a for a in result.attributions}


@pytest.fixture(params=["tiny", "effnet"])
def model_and_input(request, tiny_images, chelsea):
    if request.param == "tiny":
        return request.getfixturevalue("tiny"), tiny_images[0]
    return request.getfixturevalue("effnet"), chelsea


def test_prediction_is_the_model_output(model_and_input):
    model, x = model_and_input
    result, _ = run_fast(model, x, Targets(top_k=2), methods=("vanilla",))
    with torch.inference_mode():
        logits = model.module(x[None])[0]
    probs = logits.softmax(-1)
    top = probs.topk(5)
    assert [p.class_index for p in result.predictions] == top.indices.tolist()
    assert result.targets == tuple(top.indices[:2].tolist())
    for p, prob in zip(result.predictions, top.values):
        assert p.probability == pytest.approx(float(prob), rel=1e-4)
        assert p.logit == pytest.approx(float(logits[p.class_index]), rel=1e-4, abs=1e-5)
        assert p.label == model.spec.labels[p.class_index]


def test_gradient_maps_match_captum(model_and_input):
    model, x = model_and_input
    targets = Targets(top_k=3)
    result, maps = run_fast(model, x, targets)
    assert len(result.targets) == 3
    for target in result.targets:
        saliency = Saliency(model.module).attribute(x[None], target=target, abs=True)[0]
        torch.testing.assert_close(maps["vanilla", target].map, saliency.amax(0), rtol=1e-4, atol=1e-6)
        ixg = InputXGradient(model.module).attribute(x[None].clone(), target=target)[0]
        torch.testing.assert_close(maps["input_x_gradient", target].map, ixg.sum(0), rtol=1e-4, atol=1e-5)


def test_vanilla_channel_reductions(tiny, tiny_images):
    x = tiny_images[0]
    for reduction, reduce in [
        ("sum", lambda g: g.abs().sum(0)),
        ("l2", lambda g: g.pow(2).sum(0).sqrt()),
    ]:
        _, maps = run_fast(tiny, x, Targets(classes=(3,)), ("vanilla",), vanilla={"reduction": reduction})
        g = Saliency(tiny.module).attribute(x[None], target=3, abs=True)[0]
        torch.testing.assert_close(maps["vanilla", 3].map, reduce(g), rtol=1e-4, atol=1e-6)


def test_gradcam_matches_captum(model_and_input):
    model, x = model_and_input
    layer = resolve_layer(model.module, model.spec.target_layer)
    result, maps = run_fast(model, x, Targets(top_k=2), ("gradcam",))
    for target in result.targets:
        raw = LayerGradCam(model.module, layer).attribute(x[None], target=target, relu_attributions=True)
        up = LayerAttribution.interpolate(raw, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        torch.testing.assert_close(maps["gradcam", target].raw, raw[0, 0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(maps["gradcam", target].map, up[0, 0], rtol=1e-4, atol=1e-6)


def tiny_acts_and_grads(tiny, x, target):
    """TinyCNN's CAM-layer activations and their gradient, computed by hand (no hooks)."""
    m = tiny.module
    h = m.act2(m.bn2(m.conv2(m.act1(m.conv1(x[None])))))
    acts = m.features_act(m.conv3(h))
    logits = m.fc(torch.flatten(m.pool(acts), 1))
    (grads,) = torch.autograd.grad(logits[0, target], acts)
    return acts.detach()[0].numpy().astype(np.float64), grads[0].numpy().astype(np.float64)


def gradcam_pp_reference(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Chattopadhyay et al. eq. 19 with an exponential score, one channel and pixel at a time."""
    k, h, w = a.shape
    weights = np.zeros(k)
    for c in range(k):
        total = a[c].sum()
        for i in range(h):
            for j in range(w):
                g1 = g[c, i, j]
                if g1 == 0:
                    continue
                alpha = g1**2 / (2 * g1**2 + total * g1**3 + 1e-7)
                weights[c] += alpha * max(g1, 0.0)
    return np.maximum(np.tensordot(weights, a, axes=1), 0)


def eigencam_reference(a: np.ndarray) -> np.ndarray:
    """First principal component through the covariance's eigenvectors (not an SVD)."""
    k, h, w = a.shape
    pixels = a.reshape(k, h * w).T
    centred = pixels - pixels.mean(0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    projection = centred @ vectors[:, -1]
    if np.dot(projection - projection.mean(), pixels.sum(1)) < 0:
        projection = -projection
    return np.maximum(projection, 0).reshape(h, w)


def test_gradcam_pp_and_eigencam_match_independent_formulas(tiny, tiny_images):
    for x in tiny_images:
        result, maps = run_fast(tiny, x, Targets(top_k=2), ("gradcam_pp", "eigencam"))
        for target in result.targets:
            a, g = tiny_acts_and_grads(tiny, x, target)
            np.testing.assert_allclose(maps["gradcam_pp", target].raw.numpy(), gradcam_pp_reference(a, g), rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(maps["eigencam", target].raw.numpy(), eigencam_reference(a), rtol=1e-4, atol=1e-5)


def test_k_targets_cost_one_forward(tiny, tiny_images):
    calls = []
    handle = tiny.module.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        run_fast(tiny, tiny_images[0], Targets(top_k=4))
    finally:
        handle.remove()
    assert len(calls) == 1


FAST_METHODS = sorted(name for name, info in all_methods().items() if info.kind == "fast")


@pytest.mark.parametrize("method", FAST_METHODS)
def test_batch_of_images_equals_each_alone(tiny, tiny_vit, tiny_images, method):
    """Registry-driven batch invariance: images with different targets share one pass and get
    what they get alone, for every fast method (on tinycnn, or the test ViT for the methods
    that cannot explain tinycnn), alone and beside every other method the model supports."""
    model = tiny if get_method(method).unsupported_reason(tiny.spec) is None else tiny_vit
    assert get_method(method).unsupported_reason(model.spec) is None, f"{method} explains no test model"
    fellows = [m for m in FAST_METHODS if get_method(m).unsupported_reason(model.spec) is None]
    per_image = [Targets(top_k=2), Targets(classes=(7,)), Targets(classes=(1, 4, 9))]
    for chosen in ({method: example_params(method)}, {m: example_params(m) for m in fellows}):
        together = fast_pass(model, tiny_images, per_image, chosen)
        for x, targets, batched in zip(tiny_images, per_image, together):
            (alone,) = fast_pass(model, x[None], [targets], chosen)
            assert batched.targets == alone.targets
            mine = [(a.method, a.target) for a in alone.attributions if a.method == method]
            assert mine == [(method, t) for t in alone.targets]
            assert [(a.method, a.target) for a in batched.attributions] == [(a.method, a.target) for a in alone.attributions]
            for a, b in zip(alone.attributions, batched.attributions):
                torch.testing.assert_close(a.map, b.map, rtol=1e-4, atol=1e-6)
                if a.raw is not None:
                    torch.testing.assert_close(a.raw, b.raw, rtol=1e-4, atol=1e-6)


def test_prediction_only_runs_no_backward(tiny, tiny_images):
    (result,) = fast_pass(tiny, tiny_images[:1], [Targets(top_k=1)], {})
    assert result.attributions == [] and len(result.predictions) == 5


def test_gradcam_peak_lies_on_the_cat(effnet, chelsea):
    _, maps = run_fast(effnet, chelsea, Targets(classes=(285,)), ("gradcam",))
    cam = maps["gradcam", 285].map
    y, x = divmod(int(cam.argmax()), cam.shape[1])
    # The cat's face in the 451x300 photograph spans x 60..360, y 40..290 (background right).
    y_orig, x_orig = y * 300 / 224, x * 451 / 224
    assert 60 <= x_orig <= 360 and 40 <= y_orig <= 290, (x_orig, y_orig)
