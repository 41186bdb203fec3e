"""KernelSHAP and LIME over superpixels: Captum with the same coalitions, closed forms, properties."""

from __future__ import annotations

import itertools
import math

import grpc
import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLinearRegression, SkLearnRidge
from captum.attr import KernelShap, Lime

from helpers import LinearModel, wrap
from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.methods.kernel_shap import (
    all_coalitions,
    constrained_shapley_fit,
    shapley_kernel_weights,
)
from saliency.attribution.methods.lime import weighted_ridge
from saliency.attribution.registry import get_method, make_params
from saliency.attribution.superpixels import (
    SegmentCache,
    baseline_image,
    masked_images,
    slic_segments,
)
from saliency.attribution.types import Targets
from saliency.imaging import decode_image, to_model_input
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, png_bytes, with_config

SEGMENTED = {"n_segments": 16, "compactness": 100.0}  # ~15 grid-like segments on 32x32 noise


def run(model, x, target, method, chunk=(5, 16), cache=None, **params):
    extra = {} if cache is None else {"segments": cache}
    task = get_method(method).plan(model, x, target, make_params(method, **params), **extra)
    (result,) = ChunkExecutor(model, ChunkSizes(*chunk)).run([task])
    return result


def labels_of(model, x, n_segments, compactness):
    return slic_segments(model.spec.denormalize(x), n_segments, compactness)


def quadrant_image(model) -> torch.Tensor:
    """[3, 32, 32] four flat colours: SLIC finds exactly 4 segments."""
    pixels = torch.zeros(3, 32, 32)
    for i, colour in enumerate([(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.2, 0.2, 0.9), (0.9, 0.9, 0.2)]):
        r, c = divmod(i, 2)
        pixels[:, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = torch.tensor(colour)[:, None, None]
    return model.spec.normalize(pixels)


def lime_similarity(width):
    """Our kernel written as a Captum similarity_func on the interpretable sample."""

    def similarity(original, perturbed, interpretable, **kwargs):
        kept = interpretable.double().sum()
        distance = 1 - torch.sqrt(kept / interpretable.shape[1])
        return torch.exp(-(distance**2) / width**2)

    return similarity


# ------------------------------------------------------------------------ superpixels


def test_segments_are_consecutive_and_computed_once_per_image_on_the_worker(tiny, tiny_images):
    cache = SegmentCache()
    x = tiny_images[0]
    tasks = [
        get_method(m).plan(tiny, x, t, make_params(m, n_samples=8, **SEGMENTED), segments=cache)
        for m in ("kernel_shap", "lime")
        for t in (1, 4)
    ]
    assert cache.builds == 0  # plan runs on the event loop: no SLIC there
    ChunkExecutor(tiny, ChunkSizes(4, 8)).run(tasks)
    assert cache.builds == 1  # two methods x two targets share one segmentation
    labels = cache.get(tiny.spec, x, 16, 100.0)
    m = int(labels.max()) + 1
    assert labels.min() == 0 and torch.equal(torch.unique(labels), torch.arange(m))
    assert all(t.result.stats["segments"] == m for t in tasks)


def test_baselines_and_masked_images(tiny, tiny_images):
    x = tiny_images[1]
    labels = labels_of(tiny, x, 16, 100.0)
    segment_mean = baseline_image(x, labels, "segment_mean", 1.0)
    for s in range(int(labels.max()) + 1):
        inside = labels == s
        torch.testing.assert_close(segment_mean[:, inside], x[:, inside].mean(1, keepdim=True).expand(-1, int(inside.sum())))
    torch.testing.assert_close(baseline_image(x, labels, "mean", 1.0)[:, 5, 7], x.mean((1, 2)))
    assert torch.equal(baseline_image(x, labels, "zeros", 1.0), torch.zeros_like(x))
    assert baseline_image(x, labels, "blur", 2.0).std() < x.std()
    z = torch.tensor([[True] * 3 + [False] * (int(labels.max()) - 2)])
    image = masked_images(x, segment_mean, labels, z)[0]
    on = labels < 3
    assert torch.equal(image[:, on], x[:, on]) and torch.equal(image[:, ~on], segment_mean[:, ~on])


# ------------------------------------------------------------------------- KernelSHAP


@pytest.mark.parametrize("baseline", ["zeros", "mean"])
def test_kernel_shap_matches_captum_with_the_same_coalitions(tiny, tiny_images, baseline):
    x = tiny_images[0]
    ours = run(tiny, x, 2, "kernel_shap", n_samples=120, seed=7, baseline=baseline, **SEGMENTED)
    labels = labels_of(tiny, x, 16, 100.0)
    base = baseline_image(x, labels, baseline, 1.0)
    torch.manual_seed(7)  # Captum draws from the global generator, in the order ours does
    ref = KernelShap(tiny.module).attribute(
        x[None], baselines=base[None], target=2, feature_mask=labels[None, None], n_samples=120
    )[0]
    assert ours.stats["exact"] == 0 and ours.stats["coalitions"] == 120
    assert ours.stats["samples"] < 120  # repeated coalitions are evaluated once
    # Captum approximates efficiency with weight 1e6 on the end samples (and fits in float32).
    scale = float(ours.map.abs().max())
    torch.testing.assert_close(ours.map, ref[0], rtol=1e-3, atol=1e-4 * scale)
    assert torch.equal(ref[0], ref[1])


def test_kernel_shap_is_exact_on_a_model_linear_in_the_segments():
    model = wrap(LinearModel(size=(16, 16)), (16, 16), 4, "features")
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(2))
    result = run(model, x, 1, "kernel_shap", n_samples=40, n_segments=9, compactness=100.0)
    labels = labels_of(model, x, 9, 100.0)
    contribution = (model.module.fc.weight[1].detach().view(3, 16, 16) * x).sum(0)  # baseline zeros
    expected = torch.zeros(int(labels.max()) + 1).index_add_(0, labels.flatten(), contribution.flatten())
    assert result.stats["exact"] == 0  # sampled (2^M > 40), still exact: the fit has no residual
    torch.testing.assert_close(result.raw, expected, rtol=1e-4, atol=1e-5)


def brute_force_shapley(model, x, base, labels, target) -> torch.Tensor:
    """phi_j = sum_S |S|! (M - |S| - 1)! / M! (v(S + j) - v(S)), every S enumerated."""
    m = int(labels.max()) + 1
    z = torch.tensor(list(itertools.product([False, True], repeat=m)))
    with torch.no_grad():
        values = model.module(masked_images(x, base, labels, z))[:, target].double()
    v = {tuple(row.tolist()): float(val) for row, val in zip(z, values)}
    phi = torch.zeros(m, dtype=torch.float64)
    for row in v:
        for j in range(m):
            if not row[j]:
                s = sum(row)
                with_j = tuple(True if i == j else b for i, b in enumerate(row))
                phi[j] += math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) * (v[with_j] - v[row])
    return phi


def test_kernel_shap_enumerates_small_games_exactly(tiny):
    x = quadrant_image(tiny)
    result = run(tiny, x, 3, "kernel_shap", n_samples=64, n_segments=4, compactness=10.0, baseline="mean")
    labels = labels_of(tiny, x, 4, 10.0)
    assert int(labels.max()) + 1 == 4
    assert result.stats["exact"] == 1 and result.stats["samples"] == 16  # 2^4 < 64: only 16 calls
    expected = brute_force_shapley(tiny, x, baseline_image(x, labels, "mean", 1.0), labels, 3)
    torch.testing.assert_close(result.raw.double(), expected, rtol=1e-4, atol=1e-7)


def test_constrained_fit_enumerated_equals_shapley_for_any_game():
    """The kernel fit over all coalitions is the Shapley value (a closed form, no model)."""
    m = 5
    g = torch.Generator().manual_seed(0)
    table = torch.randn(2**m, generator=g, dtype=torch.float64)  # an arbitrary game v(z)
    code = lambda row: int(sum(int(b) << i for i, b in enumerate(row)))  # noqa: E731
    z = all_coalitions(m)
    scores = torch.stack([table[code(row)] for row in z])
    phi = constrained_shapley_fit(z, scores, shapley_kernel_weights(m, z.sum(1)), float(table[-1]), float(table[0]))
    for j in range(m):
        expected = 0.0
        for row in itertools.product([0, 1], repeat=m):
            if not row[j]:
                s = sum(row)
                with_j = list(row)
                with_j[j] = 1
                expected += math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) * float(
                    table[code(with_j)] - table[code(row)]
                )
        assert float(phi[j]) == pytest.approx(expected, abs=1e-10)


def test_kernel_shap_efficiency_on_efficientnet(effnet, chelsea):
    result = run(effnet, chelsea, 285, "kernel_shap", chunk=(8, 16), n_samples=16, n_segments=12)
    gap = result.stats["score_input"] - result.stats["score_baseline"]
    assert gap > 1  # the cat's evidence is in the image
    assert float(result.raw.double().sum()) == pytest.approx(gap, rel=1e-5)
    assert result.map.shape == (224, 224)


def test_both_methods_explain_a_vision_transformer(tiny_vit, tiny_images):
    """Forward-only and model-agnostic: efficiency holds on the test ViT too."""
    x = tiny_images[0][:, : tiny_vit.spec.input_size[0], : tiny_vit.spec.input_size[1]]
    shap = run(tiny_vit, x, 1, "kernel_shap", n_samples=24, **SEGMENTED)
    gap = shap.stats["score_input"] - shap.stats["score_baseline"]
    assert float(shap.raw.double().sum()) == pytest.approx(gap, rel=1e-6, abs=1e-9)
    lime = run(tiny_vit, x, 1, "lime", n_samples=24, **SEGMENTED)
    assert torch.isfinite(lime.map).all() and lime.map.shape == x.shape[-2:]


def test_kernel_shap_with_only_the_end_samples_splits_the_gap_evenly(tiny, tiny_images):
    result = run(tiny, tiny_images[2], 0, "kernel_shap", n_samples=2, **SEGMENTED)
    m = int(result.stats["segments"])
    gap = result.stats["score_input"] - result.stats["score_baseline"]
    assert result.stats["samples"] == 2
    torch.testing.assert_close(result.raw.double(), torch.full((m,), gap / m, dtype=torch.float64))


def test_one_segment_gets_the_whole_gap(tiny, tiny_images):
    x = tiny_images[0]  # noise at compactness 10: SLIC merges everything into one segment
    result = run(tiny, x, 2, "kernel_shap", n_samples=50, baseline="blur", n_segments=16, compactness=10.0)
    assert result.stats["segments"] == 1 and result.stats["samples"] == 2
    gap = result.stats["score_input"] - result.stats["score_baseline"]
    assert float(result.raw[0]) == pytest.approx(gap, abs=1e-7)
    lime = run(tiny, x, 2, "lime", n_samples=10, n_segments=16, compactness=10.0)
    assert lime.stats["segments"] == 1 and torch.isfinite(lime.map).all()


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_seeded_results_are_deterministic(tiny, tiny_images, method):
    a = run(tiny, tiny_images[0], 1, method, n_samples=30, seed=5, **SEGMENTED)
    b = run(tiny, tiny_images[0], 1, method, chunk=(3, 7), n_samples=30, seed=5, **SEGMENTED)
    c = run(tiny, tiny_images[0], 1, method, n_samples=30, seed=6, **SEGMENTED)
    assert torch.equal(a.map, b.map)
    assert not torch.allclose(a.map, c.map)


# ------------------------------------------------------------------------------- LIME


@pytest.mark.parametrize(("alpha", "baseline"), [(1.0, "zeros"), (0.0, "blur"), (5.0, "segment_mean")])
def test_lime_matches_captum_with_the_same_coalitions(tiny, tiny_images, alpha, baseline):
    x = tiny_images[1]
    ours = run(tiny, x, 4, "lime", n_samples=90, seed=11, alpha=alpha, kernel_width=0.5, baseline=baseline, **SEGMENTED)
    labels = labels_of(tiny, x, 16, 100.0)
    base = baseline_image(x, labels, baseline, 10.0)
    surrogate = SkLearnRidge(alpha=alpha) if alpha > 0 else SkLearnLinearRegression()
    torch.manual_seed(11)
    ref = Lime(tiny.module, interpretable_model=surrogate, similarity_func=lime_similarity(0.5)).attribute(
        x[None], baselines=base[None], target=4, feature_mask=labels[None, None], n_samples=90
    )[0]
    scale = float(ours.map.abs().max())
    torch.testing.assert_close(ours.map, ref[0], rtol=1e-3, atol=1e-4 * scale)
    assert ours.stats["intercept"] == pytest.approx(float(surrogate.bias()), rel=1e-3, abs=1e-6)


def test_lime_recovers_the_coefficients_of_a_model_linear_in_the_segments():
    model = wrap(LinearModel(size=(16, 16)), (16, 16), 4, "features")
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(4))
    result = run(model, x, 2, "lime", n_samples=60, n_segments=9, compactness=100.0, alpha=0.0, baseline="mean")
    labels = labels_of(model, x, 9, 100.0)
    delta = x - x.mean((1, 2), keepdim=True)
    contribution = (model.module.fc.weight[2].detach().view(3, 16, 16) * delta).sum(0)
    expected = torch.zeros(int(labels.max()) + 1).index_add_(0, labels.flatten(), contribution.flatten())
    torch.testing.assert_close(result.raw, expected, rtol=1e-4, atol=1e-5)
    assert result.stats["surrogate_r2"] == pytest.approx(1.0, abs=1e-9)


def test_weighted_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(3)
    features = (torch.rand(40, 6, generator=g) < 0.5).double()
    targets = torch.randn(40, generator=g, dtype=torch.float64)
    weights = torch.rand(40, generator=g, dtype=torch.float64)
    coef, intercept = weighted_ridge(features, targets, weights, 2.0)
    ref = Ridge(alpha=2.0).fit(features.numpy(), targets.numpy(), sample_weight=weights.numpy())
    np.testing.assert_allclose(coef.numpy(), ref.coef_, rtol=1e-10)
    assert intercept == pytest.approx(ref.intercept_, rel=1e-10)


# ---------------------------------------------------------------------- params and wire


@pytest.mark.parametrize(
    ("method", "values", "field"),
    [
        ("kernel_shap", {"n_samples": 1}, "kernel_shap.n_samples"),
        ("kernel_shap", {"n_samples": 10**6}, "kernel_shap.n_samples"),
        ("kernel_shap", {"n_segments": 1}, "kernel_shap.n_segments"),
        ("kernel_shap", {"n_segments": 501}, "kernel_shap.n_segments"),
        ("kernel_shap", {"compactness": float("nan")}, "kernel_shap.compactness"),
        ("kernel_shap", {"baseline": "grey"}, "kernel_shap.baseline"),
        ("kernel_shap", {"blur_sigma": 0.0}, "kernel_shap.blur_sigma"),
        ("kernel_shap", {"seed": -1}, "kernel_shap.seed"),
        ("lime", {"n_samples": 0}, "lime.n_samples"),
        ("lime", {"n_samples": 10**6}, "lime.n_samples"),
        ("lime", {"kernel_width": 0.0}, "lime.kernel_width"),
        ("lime", {"kernel_width": float("inf")}, "lime.kernel_width"),
        ("lime", {"alpha": -1.0}, "lime.alpha"),
        ("lime", {"compactness": 0.0}, "lime.compactness"),
        ("lime", {"baseline": "black"}, "lime.baseline"),
    ],
)
def test_absurd_parameters_name_their_field(method, values, field):
    from saliency.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as info:
        make_params(method, **values)
    assert info.value.field == field


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=("tinycnn",)))
    yield running
    running.stop()


def test_over_the_wire_bad_parameters_are_refused_and_good_ones_match_the_engine(service, tiny):
    blocks = np.random.default_rng(3).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    rgb = blocks.repeat(8, axis=0).repeat(8, axis=1)  # flat 8x8 blocks: SLIC finds several segments
    stub = service.stub()
    for bad_method, field in [
        (pb.MethodRequest(method=pb.METHOD_LIME, lime=pb.LimeParams(kernel_width=-1.0)), "lime.kernel_width"),
        (pb.MethodRequest(method=pb.METHOD_KERNEL_SHAP, kernel_shap=pb.KernelShapParams(n_samples=1)), "kernel_shap.n_samples"),
        (pb.MethodRequest(method=pb.METHOD_KERNEL_SHAP, kernel_shap=pb.KernelShapParams(n_segments=10**6)), "kernel_shap.n_segments"),
        (pb.MethodRequest(method=pb.METHOD_KERNEL_SHAP, kernel_shap=pb.KernelShapParams(baseline=42)), "baseline"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(pb.ExplainRequest(model="tinycnn", image=png_bytes(rgb), methods=[bad_method]), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in info.value.details(), info.value.details()

    request = pb.ExplainRequest(
        model="tinycnn",
        image=png_bytes(rgb),
        targets=pb.Targets(top_k=2),
        methods=[
            pb.MethodRequest(
                method=pb.METHOD_KERNEL_SHAP,
                kernel_shap=pb.KernelShapParams(n_samples=30, n_segments=8, baseline=pb.SUPERPIXEL_BASELINE_SEGMENT_MEAN),
            ),
            pb.MethodRequest(method=pb.METHOD_LIME, lime=pb.LimeParams(n_samples=25, n_segments=8, seed=4)),
        ],
    )
    response = stub.Explain(request, timeout=60)
    x = to_model_input(decode_image(png_bytes(rgb)), tiny.spec)
    local = Engine(tiny, ChunkSizes(4, 8)).explain(
        x,
        Targets(top_k=2),
        {
            "kernel_shap": make_params("kernel_shap", n_samples=30, n_segments=8, baseline="segment_mean"),
            "lime": make_params("lime", n_samples=25, n_segments=8, seed=4),
        },
    )
    expected = {(a.method, a.target): a.map.numpy() for a in local.attributions}
    names = {pb.METHOD_KERNEL_SHAP: "kernel_shap", pb.METHOD_LIME: "lime"}
    got = {(names[a.method], a.target): a for a in response.attributions}
    assert set(got) == set(expected) and len(got) == 4
    for key, attribution in got.items():
        values = np.frombuffer(attribution.map.data, dtype=np.float32).reshape(tuple(attribution.map.shape))
        np.testing.assert_allclose(values, expected[key], rtol=1e-4, atol=1e-7)
        assert attribution.stats["segments"] >= 2
