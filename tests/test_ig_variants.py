"""Integrated Gradients' variants: GradientSHAP (expected gradients over reference images) and
XRAI (IG from black and white baselines, ranked over regions): Captum, closed forms, ranking,
the wire."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import scipy.sparse
import torch
from captum.attr import GradientShap, IntegratedGradients

from helpers import LinearModel, wrap
from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.limits import DEFAULT_LIMITS
from saliency.attribution.methods.gradient_shap import draw, reference_set
from saliency.attribution.methods.reference_sets import (
    PHOTOS,
    ReferenceCache,
    ReferenceSet,
    build_pixels,
)
from saliency.attribution.methods.xrai import rank_regions, segment_regions
from saliency.attribution.registry import get_method, make_params
from saliency.codec import method_params, tensors
from saliency.errors import InvalidArgument
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, png_bytes, with_config


def run(model, x, target, method, chunk=(5, 16), **params):
    task = get_method(method).plan(model, x, target, make_params(method, **params))
    (result,) = ChunkExecutor(model, ChunkSizes(*chunk)).run([task])
    return result


def captum_gradient_shap(model, x, target, references, n_samples, stdev, seed):
    """Captum's GradientShap with its global RNGs seeded as ours: the same draws by construction."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    return GradientShap(model.module).attribute(
        x[None], baselines=references, n_samples=n_samples, stdevs=stdev, target=target
    )[0]


# ------------------------------------------------------------------------------ GradientSHAP


@pytest.mark.parametrize(("reference", "stdev"), [("photos", 0.0), ("uniform", 0.2), ("black_white", 0.1), ("custom", 0.05)])
def test_gradient_shap_matches_captum_with_the_same_draws(tiny, tiny_images, reference, stdev):
    x = tiny_images[1]
    custom = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(8)) if reference == "custom" else None
    params = make_params(
        "gradient_shap", n_samples=11, stdev=stdev, reference=reference, seed=17, custom_reference=custom
    )
    ours = run(tiny, x, 6, "gradient_shap", chunk=(4, 3), n_samples=11, stdev=stdev, reference=reference,
               seed=17, custom_reference=custom)
    refs = reference_set(tiny, x, params).all()
    ref = captum_gradient_shap(tiny, x, 6, refs, 11, ours.stats["noise_stdev"], 17)
    torch.testing.assert_close(ours.raw, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.map, ref.sum(0), rtol=1e-5, atol=1e-6)
    assert ours.stats["n_samples"] == 11 and ours.stats["references"] == len(refs)


def test_gradient_shap_matches_captum_on_efficientnet(effnet, chelsea):
    ours = run(effnet, chelsea, 285, "gradient_shap", chunk=(2, 8), n_samples=4, seed=3)
    refs = reference_set(effnet, chelsea, make_params("gradient_shap")).all()
    ref = captum_gradient_shap(effnet, chelsea, 285, refs, 4, 0.0, 3)
    torch.testing.assert_close(ours.raw, ref, rtol=1e-3, atol=1e-6)


def test_gradient_shap_on_a_linear_model_is_w_times_x_minus_the_mean_reference():
    """Gradients are constant (w), so attr = w * (x - mean of the drawn references), exactly,
    and completeness holds exactly against the drawn references' mean logit."""
    model = wrap(LinearModel(), (8, 8), 4, "features")
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(2))
    refs = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    result = run(model, x, 2, "gradient_shap", n_samples=40, reference="custom", custom_reference=refs, seed=9)
    drawn_mean = refs[draw(40, 6, 9).indices].mean(0)
    w = model.module.fc.weight[2].detach().view(3, 8, 8)
    torch.testing.assert_close(result.raw, w * (x - drawn_mean), rtol=1e-4, atol=1e-5)
    assert result.stats["completeness_error"] < 1e-4
    # With every reference drawn equally often (one reference), it is w * (x - E[b]) itself.
    single = run(model, x, 2, "gradient_shap", n_samples=5, reference="custom", custom_reference=refs[:1])
    torch.testing.assert_close(single.raw, w * (x - refs[0]), rtol=1e-4, atol=1e-5)


def test_gradient_shap_does_not_depend_on_chunking_and_is_seedable(tiny, tiny_images):
    x = tiny_images[0]
    kwargs = {"n_samples": 10, "stdev": 0.3, "reference": "uniform", "seed": 5}
    one = run(tiny, x, 1, "gradient_shap", chunk=(1, 1), **kwargs)
    big = run(tiny, x, 1, "gradient_shap", chunk=(16, 16), **kwargs)
    torch.testing.assert_close(one.raw, big.raw, rtol=1e-5, atol=1e-7)
    other = run(tiny, x, 1, "gradient_shap", chunk=(16, 16), **{**kwargs, "seed": 6})
    assert not torch.allclose(other.raw, big.raw)


def test_reference_sets_are_built_once_per_size_and_normalised(tiny):
    cache = ReferenceCache()
    photos = ReferenceSet("photos", tiny.spec, (3, 20, 30), cache=cache)
    assert photos.count == len(PHOTOS)
    stack = photos.all()
    photos.get([0, 3])
    assert cache.builds == 1 and stack.shape == (len(PHOTOS), 3, 20, 30)
    pixels = build_pixels("photos", 20, 30)
    torch.testing.assert_close(stack, tiny.spec.normalize(pixels.float() / 255))
    assert pixels.float().std(dim=(1, 2, 3)).min() > 5  # real images, not blank
    black, white = ReferenceSet("black_white", tiny.spec, (3, 4, 4), cache=cache).all()
    torch.testing.assert_close(black, tiny.spec.normalize(torch.zeros(3, 4, 4)))
    torch.testing.assert_close(white, tiny.spec.normalize(torch.ones(3, 4, 4)))
    uniform = build_pixels("uniform", 16, 16)
    assert torch.equal(uniform, build_pixels("uniform", 16, 16)) and uniform.shape == (16, 3, 16, 16)


def test_custom_reference_of_another_shape_is_refused_at_plan(tiny, tiny_images):
    params = make_params("gradient_shap", reference="custom", custom_reference=torch.zeros(2, 3, 8, 8))
    with pytest.raises(InvalidArgument) as info:
        get_method("gradient_shap").plan(tiny, tiny_images[0], 1, params)
    assert info.value.field == "gradient_shap.custom_reference"


def test_custom_reference_round_trips_and_is_checked_on_decode():
    refs = torch.randn(3, 3, 8, 8)
    params = make_params("gradient_shap", reference="custom", custom_reference=refs)
    (request,) = method_params.method_requests_to_proto({"gradient_shap": params})
    back = method_params.methods_from_proto([request], DEFAULT_LIMITS, 4, (3, 8, 8))["gradient_shap"]
    torch.testing.assert_close(back.custom_reference, refs)
    request.gradient_shap.custom_reference.CopyFrom(tensors.tensor_to_proto(torch.zeros(3, 8, 8)))
    with pytest.raises(InvalidArgument) as info:
        method_params.methods_from_proto([request], DEFAULT_LIMITS, 4, (3, 8, 8))
    assert info.value.field == "methods[0].gradient_shap.custom_reference.shape"


# ------------------------------------------------------------------------------------- XRAI


def pair_xrai(attr: np.ndarray, masks: list[np.ndarray], area_threshold: float = 1.0, min_pixels: int = 1):
    """PAIR saliency's `_xrai` greedy loop, written out with full boolean masks (the reference)."""
    output = np.full(attr.shape, -np.inf)
    ranks = np.full(attr.shape, -1)
    current = np.zeros(attr.shape, dtype=bool)
    remaining = dict(enumerate(masks))
    order = []
    while current.mean() <= area_threshold:
        best_gain, best_key = -np.inf, None
        for key in list(remaining):
            new = remaining[key] & ~current
            if new.sum() < max(min_pixels, 1):
                del remaining[key]
                continue
            gain = attr[new].mean()
            if gain > best_gain:
                best_gain, best_key = gain, key
        if not remaining:
            break
        new = remaining.pop(best_key) & ~current
        output[new] = best_gain
        ranks[new] = len(order)
        order.append(best_key)
        current |= new
    if (~current).any():
        output[~current], ranks[~current] = attr[~current].mean(), len(order)
    return output, ranks, order


def to_sparse(masks: list[np.ndarray]) -> scipy.sparse.csr_matrix:
    return scipy.sparse.csr_matrix(np.stack([m.ravel() for m in masks]).astype(float))


@pytest.mark.parametrize(("area_threshold", "min_pixels"), [(1.0, 1), (0.6, 1), (1.0, 5)])
def test_rank_regions_equals_the_reference_greedy_loop(area_threshold, min_pixels):
    rng = np.random.default_rng(0)
    attr = rng.normal(size=(20, 24))
    masks = []
    for _ in range(40):  # overlapping rectangles of every size
        y, x = rng.integers(0, 18), rng.integers(0, 22)
        h, w = rng.integers(1, 9), rng.integers(1, 9)
        m = np.zeros((20, 24), dtype=bool)
        m[y : y + h, x : x + w] = True
        masks.append(m)
    expected, expected_rank, order = pair_xrai(attr, masks, area_threshold, min_pixels)
    density, rank, steps = rank_regions(attr, to_sparse(masks), area_threshold, min_pixels)
    np.testing.assert_allclose(density, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(rank, expected_rank)
    assert len(order) > 5 and steps == expected_rank.max() + 1


def test_region_order_is_density_order_on_a_hand_made_map():
    attr = np.zeros((8, 8))
    attr[:4, :4], attr[:4, 4:], attr[4:, :4], attr[4:, 4:] = 1.0, 4.0, -2.0, 2.5
    attr[0, 0] = 3.0  # the top-left quadrant's density is (15 + 3) / 16
    quadrants = [np.zeros((8, 8), dtype=bool) for _ in range(4)]
    quadrants[0][:4, :4], quadrants[1][:4, 4:], quadrants[2][4:, :4], quadrants[3][4:, 4:] = True, True, True, True
    density, rank, steps = rank_regions(attr, to_sparse(quadrants))
    assert steps == 4
    assert [int(rank[0, 4]), int(rank[4, 4]), int(rank[0, 0]), int(rank[4, 0])] == [0, 1, 2, 3]
    assert density[0, 4] == 4.0 and density[4, 4] == 2.5 and density[4, 0] == -2.0
    assert density[0, 0] == pytest.approx(18 / 16)


def test_segment_regions_cover_the_image_at_every_scale():
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(32, 32, 3))
    image[8:20, 8:20] = [1.0, 0.1, 0.1]
    regions = segment_regions(image)
    dense = regions.toarray().reshape(-1, 32, 32) > 0
    assert regions.shape[1] == 32 * 32 and set(np.unique(regions.data)) == {1.0}
    # six scales, each a partition (before dilation): each pixel is in at least six regions
    assert dense.sum(0).min() >= 6


def square_model_and_image():
    """A linear 2-class model whose class-0 weights are nonzero only in a 10 x 10 square, and
    an image that is mid-grey with a bright square at the same place."""
    model = wrap(LinearModel((32, 32), 2), (32, 32), 2, "features")
    with torch.no_grad():
        weight = torch.zeros(3, 32, 32)
        weight[:, 11:21, 6:16] = 1.0
        model.module.fc.weight[0] = weight.flatten()
    x = torch.full((3, 32, 32), 0.5)
    x[:, 11:21, 6:16] = 0.95
    return model, x


def test_xrai_ranks_the_region_holding_the_evidence_first():
    model, x = square_model_and_image()
    result = run(model, x, 0, "xrai", n_steps=8)
    first = result.raw == 0
    square = torch.zeros(32, 32, dtype=torch.bool)
    square[11:21, 6:16] = True
    grown = torch.zeros(32, 32, dtype=torch.bool)
    grown[10:22, 5:17] = True  # the square dilated by the radius (1 pixel at 32 x 32)
    # The top value is the square's attribution density, IG = (x - 0.5) * w = 0.45 (black and
    # white baselines averaged); the region ranked first carries it, and so does all of the
    # square but its corners (blurring before segmentation gives those to a border region).
    top = float(result.map.max())
    at_top = result.map == top
    assert top == pytest.approx(0.45, rel=1e-4)
    assert bool(first.any()) and not bool((first & ~at_top).any())
    assert not bool((at_top & ~square).any()) and int(at_top.sum()) >= 96
    assert float(result.map[~grown].max()) < 0.2 * top


def test_xrai_matches_captum_ig_ranked_over_the_same_regions(tiny, tiny_images):
    """Oracle: Captum IG from black and white (Gauss-Legendre), averaged, channel max, then the
    ranking (itself checked against the reference loop above)."""
    x = tiny_images[2]
    ours = run(tiny, x, 5, "xrai", chunk=(6, 4), n_steps=12, area_threshold=0.8)
    black, white = tiny.spec.normalize(torch.zeros_like(x)), tiny.spec.normalize(torch.ones_like(x))
    ig = IntegratedGradients(tiny.module)
    igs = [ig.attribute(x[None], baselines=b[None], target=5, n_steps=12, method="gausslegendre")[0] for b in (black, white)]
    attr = torch.stack(igs).mean(0).amax(0).double().numpy()
    pixels = (x * 0.25 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()  # tinycnn: mean 0.5, std 0.25
    density, rank, _ = rank_regions(attr, segment_regions(pixels), 0.8, 2)
    torch.testing.assert_close(ours.map, torch.from_numpy(density).float(), rtol=1e-4, atol=1e-6)
    assert torch.equal(ours.raw, torch.from_numpy(rank).float())


def test_xrai_does_not_depend_on_chunking(tiny, tiny_images):
    a = run(tiny, tiny_images[0], 2, "xrai", chunk=(1, 1), n_steps=5, baseline="black")
    b = run(tiny, tiny_images[0], 2, "xrai", chunk=(32, 32), n_steps=5, baseline="black")
    torch.testing.assert_close(a.map, b.map, rtol=1e-5, atol=1e-7)
    assert torch.equal(a.raw, b.raw)


# -------------------------------------------------------------------------------- the wire


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=("tinycnn",)))
    yield running
    running.stop()


def tiny_png() -> bytes:
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return png_bytes(rgb)


def test_both_methods_over_the_wire(service):
    request = pb.ExplainRequest(
        model="tinycnn",
        image=tiny_png(),
        methods=[
            pb.MethodRequest(method=pb.METHOD_GRADIENT_SHAP, gradient_shap=pb.GradientShapParams(n_samples=6, reference=pb.REFERENCE_SET_BLACK_WHITE)),
            pb.MethodRequest(method=pb.METHOD_XRAI, xrai=pb.XraiParams(n_steps=4)),
        ],
    )
    response = service.stub().Explain(request, timeout=60)
    assert [a.method for a in response.attributions] == [pb.METHOD_GRADIENT_SHAP, pb.METHOD_XRAI]
    assert all(list(a.map.shape) == [32, 32] for a in response.attributions)
    assert response.attributions[0].stats["references"] == 2
    assert response.attributions[1].stats["regions_added"] >= 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (
            {"gradient_shap": pb.GradientShapParams(reference=pb.REFERENCE_SET_CUSTOM, custom_reference=tensors.tensor_to_proto(torch.zeros(2, 3, 8, 8)))},
            "methods[0].gradient_shap.custom_reference.shape",
        ),
        ({"gradient_shap": pb.GradientShapParams(reference=pb.REFERENCE_SET_CUSTOM)}, "methods[0].gradient_shap.custom_reference"),
        ({"gradient_shap": pb.GradientShapParams(seed=2**40)}, "methods[0].gradient_shap.seed"),
        ({"xrai": pb.XraiParams(area_threshold=0.0)}, "methods[0].xrai.area_threshold"),
        ({"xrai": pb.XraiParams(n_steps=0)}, "methods[0].xrai.n_steps"),
    ],
)
def test_bad_parameters_over_the_wire_name_their_field(service, params, field):
    kind = pb.METHOD_GRADIENT_SHAP if "gradient_shap" in params else pb.METHOD_XRAI
    request = pb.ExplainRequest(model="tinycnn", image=tiny_png(), methods=[pb.MethodRequest(method=kind, **params)])
    with pytest.raises(grpc.RpcError) as info:
        service.stub().Explain(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()


def test_a_latency_budget_has_a_cheap_counterpart_for_both():
    from saliency.runtime.policy import FALLBACKS

    for name in ("gradient_shap", "xrai"):
        assert get_method(FALLBACKS[name]).kind == "fast"
