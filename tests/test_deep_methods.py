"""Deep methods against Captum and closed forms; executor packing, cancellation, memory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

from helpers import LinearModel, QuadrantModel, wrap
from saliency.attribution.baselines import gaussian_blur
from saliency.attribution.executor import ChunkExecutor, ChunkSizes, TaskCancelled
from saliency.attribution.methods import rise
from saliency.attribution.methods.integrated_gradients import RULES, quadrature
from saliency.attribution.methods.rise import MaskSampler, plan_rise
from saliency.attribution.registry import all_methods, get_method, make_params


def run(model, x, target, method, chunk=(5, 16), **params):
    task = get_method(method).plan(model, x, target, make_params(method, **params))
    (result,) = ChunkExecutor(model, ChunkSizes(*chunk)).run([task])
    return result


@pytest.mark.parametrize("rule", RULES)
def test_ig_matches_captum_on_tinycnn(tiny, tiny_images, rule):
    x = tiny_images[1]
    ours = run(tiny, x, 2, "ig", n_steps=16, rule=rule)
    ref = IntegratedGradients(tiny.module).attribute(
        x[None], baselines=0.0, target=2, n_steps=16, method=rule
    )[0]
    if rule == "riemann_trapezoid":
        # Captum's trapezoid weights are 1/n (ends halved) on linspace(0, 1, n): they sum to
        # (n - 1)/n. The trapezoid rule on that grid has spacing 1/(n - 1); ours sums to 1.
        ref = ref * 16 / 15
    torch.testing.assert_close(ours.raw, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.map, ref.sum(0), rtol=1e-4, atol=1e-5)


def test_ig_matches_captum_on_efficientnet(effnet, chelsea):
    ours = run(effnet, chelsea, 285, "ig", chunk=(10, 16), n_steps=20, baseline="black")
    black = effnet.spec.normalize(torch.zeros_like(chelsea))
    ref = IntegratedGradients(effnet.module).attribute(
        chelsea[None], baselines=black[None], target=285, n_steps=20, internal_batch_size=10
    )[0]
    torch.testing.assert_close(ours.raw, ref, rtol=1e-3, atol=1e-5)


def test_ig_completeness_on_efficientnet(effnet, chelsea):
    """The closed-form property: sum(attr) = F(x) - F(x'). Reported error for n=50 is ~3 %."""
    result = run(effnet, chelsea, 285, "ig", chunk=(10, 16), n_steps=50)
    gap = result.stats["score_input"] - result.stats["score_baseline"]
    assert gap > 1
    assert result.stats["completeness_error"] < 0.08
    assert abs(float(result.raw.sum()) - gap) == pytest.approx(result.stats["completeness_error_abs"], rel=1e-4)


@pytest.mark.parametrize("rule", RULES)
def test_ig_on_a_linear_model_is_exact(rule):
    model = wrap(LinearModel(), (8, 8), 4, "features")
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(5))
    result = run(model, x, 1, "ig", n_steps=7, rule=rule, baseline="custom", custom_baseline=torch.ones(3, 8, 8))
    w = model.module.fc.weight[1].detach().view(3, 8, 8)
    torch.testing.assert_close(result.raw, (x - 1) * w, rtol=1e-5, atol=1e-6)
    assert result.stats["completeness_error"] < 1e-4


def test_quadrature_weights_integrate_polynomials():
    for rule in RULES:
        alphas, weights = quadrature(rule, 64)
        assert weights.sum() == pytest.approx(1.0)
        assert (alphas >= 0).all() and (alphas <= 1).all()
    alphas, weights = quadrature("gausslegendre", 5)
    assert (weights * alphas**7).sum() == pytest.approx(1 / 8)  # exact to degree 2n - 1


def test_ig_baselines(tiny, tiny_images):
    x = tiny_images[0]
    for baseline in ("zeros", "black", "blur", "uniform"):
        result = run(tiny, x, 0, "ig", n_steps=8, baseline=baseline)
        assert torch.isfinite(result.map).all()
    blurred = gaussian_blur(x, 2.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    a = run(tiny, x, 0, "ig", n_steps=8, baseline="uniform", seed=1).map
    b = run(tiny, x, 0, "ig", n_steps=8, baseline="uniform", seed=1).map
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("aggregate", "nt_type"), [("mean", "smoothgrad"), ("square", "smoothgrad_sq"), ("variance", "vargrad")]
)
def test_smoothgrad_matches_captum_noise_tunnel_with_the_same_noise(tiny, tiny_images, aggregate, nt_type):
    """Both draw N(0, 1) from a CPU generator seeded alike, so the noise is the same noise."""
    x = tiny_images[2]
    ours = run(tiny, x, 4, "smoothgrad", n_samples=12, sigma=0.2, aggregate=aggregate, seed=7)
    torch.manual_seed(7)
    ref = NoiseTunnel(Saliency(tiny.module)).attribute(
        x[None], nt_type=nt_type, nt_samples=12, stdevs=ours.stats["noise_stdev"], target=4, abs=True
    )[0]
    torch.testing.assert_close(ours.raw, ref, rtol=1e-4, atol=1e-6)


def test_smoothgrad_is_seedable(tiny, tiny_images):
    x = tiny_images[0]
    a = run(tiny, x, 1, "smoothgrad", n_samples=6, seed=1).map
    b = run(tiny, x, 1, "smoothgrad", n_samples=6, seed=1).map
    c = run(tiny, x, 1, "smoothgrad", n_samples=6, seed=2).map
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_rise_finds_the_quadrant_the_logit_depends_on():
    model = wrap(QuadrantModel(), (32, 32), 2, "features")
    x = torch.ones(3, 32, 32)
    result = run(model, x, 0, "rise", n_masks=1000, grid_size=4, p=0.5, seed=0)
    m = result.map
    peak_y, peak_x = divmod(int(m.argmax()), 32)
    assert peak_y < 16 and peak_x < 16
    # Every pixel carries the mean score; upsampled cells spill a little over the border.
    tl, tr, bl, br = (m[:16, :16].mean(), m[:16, 16:].mean(), m[16:, :16].mean(), m[16:, 16:].mean())
    assert tl - br > 3 * (max(tr, bl) - br), (tl, tr, bl, br)


def reference_mask_bank(height: int, width: int, n: int, s: int, p: float, seed: int) -> torch.Tensor:
    """The whole bank [n, H, W] float16, as RISE built it before it made masks per chunk (its
    code, kept as the reference the per-chunk masks must equal)."""
    generator = torch.Generator().manual_seed(seed)
    cell_h, cell_w = math.ceil(height / s), math.ceil(width / s)
    up_h, up_w = (s + 1) * cell_h, (s + 1) * cell_w
    bank = torch.empty(n, height, width, dtype=torch.float16)
    block = 128
    for start in range(0, n, block):
        m = min(block, n - start)
        grids = (torch.rand(m, 1, s, s, generator=generator) < p).float()
        up = F.interpolate(grids, size=(up_h, up_w), mode="bilinear", align_corners=False)[:, 0]
        dy = torch.randint(0, cell_h, (m,), generator=generator)
        dx = torch.randint(0, cell_w, (m,), generator=generator)
        for i in range(m):
            bank[start + i] = up[i, dy[i] : dy[i] + height, dx[i] : dx[i] + width]
    return bank


@pytest.mark.parametrize("size, n, s, p, seed", [((32, 32), 300, 4, 0.5, 3), ((40, 24), 130, 5, 0.3, 9)])
def test_rise_masks_made_per_chunk_equal_the_whole_bank(size, n, s, p, seed):
    bank = reference_mask_bank(*size, n, s, p, seed)
    sampler = MaskSampler(*size, n, s, p, seed)
    for start, stop in [(0, 7), (7, 127), (127, 129), (129, 130), (130, n), (5, 6), (0, n)]:
        assert torch.equal(sampler.masks(start, stop), bank[start:stop]), (start, stop)
    # Any range first, without walking through the earlier ones by hand.
    assert torch.equal(MaskSampler(*size, n, s, p, seed).masks(n - 3, n), bank[n - 3 :])
    assert 0 <= float(bank.min()) and float(bank.max()) <= 1


def test_rise_equals_the_formula_over_the_reference_bank(tiny, tiny_images):
    x, target, n = tiny_images[0], 4, 150
    params = make_params("rise", n_masks=n, grid_size=4, p=0.4, seed=11)
    bank = reference_mask_bank(32, 32, n, 4, 0.4, 11).float()
    with torch.no_grad():
        probs = tiny.module(x[None] * bank[:, None]).softmax(-1)[:, target]
    expected = torch.einsum("n,nhw->hw", probs, bank) / (n * 0.4)
    for chunk in (7, 64):
        (result,) = ChunkExecutor(tiny, ChunkSizes(4, chunk)).run([plan_rise(tiny, x, target, params)])
        torch.testing.assert_close(result.map, expected, rtol=1e-4, atol=1e-6)


def test_rise_plan_makes_no_mask_and_holds_no_bank(tiny, monkeypatch):
    """plan() runs on the request path: 8192 masks at 224x224 used to build a 0.8 GB bank in it."""
    x = torch.zeros(3, 224, 224)

    def no_masks_in_plan(*args, **kwargs):
        raise AssertionError("a mask was made in plan()")

    with monkeypatch.context() as m:
        m.setattr(rise.F, "interpolate", no_masks_in_plan)
        big = plan_rise(tiny, x, 1, make_params("rise", n_masks=8192))
    small = plan_rise(tiny, x, 1, make_params("rise", n_masks=64))
    bank_bytes = 8192 * 224 * 224 * 2
    assert big.memory_bytes < bank_bytes / 500  # input, map, generator states: ~1 MB
    assert small.memory_bytes <= big.memory_bytes < small.memory_bytes + (1 << 20)
    first = big.streams[0].make_inputs(0, 3)  # masks are made with the chunk (and go to the reducer)
    assert first.inputs.shape == (3, 3, 224, 224) and first.side.shape == (3, 224, 224)


DEEP = sorted(name for name, info in all_methods().items() if info.kind == "deep")
SMALL = {name: dict(get_method(name).example) for name in DEEP}  # registered examples: small


@pytest.mark.parametrize("method", DEEP)
def test_deep_result_is_the_same_alone_or_packed_with_other_work(tiny, tiny_vit, tiny_images, method):
    """Batch invariance: other images, targets and methods in the same chunks change nothing.

    On tinycnn, or on the test ViT for methods that cannot explain tinycnn."""
    model = tiny if get_method(method).unsupported_reason(tiny.spec) is None else tiny_vit
    assert get_method(method).unsupported_reason(model.spec) is None, f"{method} explains no test model"
    params = make_params(method, **SMALL[method])
    alone = ChunkExecutor(model, ChunkSizes(4, 8)).run(
        [get_method(method).plan(model, tiny_images[0], 3, params)]
    )[0]
    fellows = [m for m in DEEP if get_method(m).unsupported_reason(model.spec) is None]
    others = [
        get_method(m).plan(model, tiny_images[i % 3], (i * 3) % 10, make_params(m, **SMALL[m]))
        for i, m in enumerate(fellows * 2)
    ]
    mine = get_method(method).plan(model, tiny_images[0], 3, params)
    tasks = others[:3] + [mine] + others[3:]
    executor = ChunkExecutor(model, ChunkSizes(7, 13))
    executor.run(tasks)
    assert executor.stats.chunks < sum(t.n_samples for t in tasks) / 4  # really packed
    torch.testing.assert_close(mine.result.map, alone.map, rtol=1e-4, atol=1e-6)


def test_chunks_never_exceed_the_budget_and_keep_kinds_apart(tiny, tiny_images):
    seen = []
    executor = ChunkExecutor(tiny, ChunkSizes(grad=5, forward=11))
    original = executor._evaluate

    def spy(inputs, targets, needs_grad):
        seen.append((len(inputs), needs_grad))
        return original(inputs, targets, needs_grad)

    executor._evaluate = spy
    tasks = [
        get_method("ig").plan(tiny, tiny_images[0], 1, make_params("ig", n_steps=12)),
        get_method("rise").plan(tiny, tiny_images[1], 2, make_params("rise", n_masks=25, grid_size=4)),
    ]
    executor.run(tasks)
    assert all(n <= (5 if grad else 11) for n, grad in seen)
    assert sum(n for n, grad in seen if grad) == 12
    assert sum(n for n, grad in seen if not grad) == 25 + 2  # RISE masks + IG's endpoints


def test_cancelled_task_is_dropped_and_its_samples_never_computed(tiny, tiny_images):
    executor = ChunkExecutor(tiny, ChunkSizes(4, 4))
    done = []
    keep = executor.submit(get_method("ig").plan(tiny, tiny_images[0], 1, make_params("ig", n_steps=8)))
    drop = get_method("ig").plan(tiny, tiny_images[1], 1, make_params("ig", n_steps=400))
    drop.on_done = done.append
    executor.submit(drop)
    executor.step()  # 4 samples of `keep`
    drop.cancelled = True
    while executor.step():
        pass
    assert keep.result is not None
    assert isinstance(drop.error, TaskCancelled) and done == [drop]
    assert executor.stats.samples == 8 + 2  # keep's path points and endpoints only
    assert executor.stats.tasks_dropped == 1


def test_a_failing_task_does_not_sink_the_others(tiny, tiny_images):
    good = get_method("ig").plan(tiny, tiny_images[0], 1, make_params("ig", n_steps=6))
    bad = get_method("smoothgrad").plan(tiny, tiny_images[1], 1, make_params("smoothgrad", n_samples=6))

    def explode(start, out):
        raise RuntimeError("reducer failed")

    bad.streams[0].consume = explode
    executor = ChunkExecutor(tiny, ChunkSizes(8, 8))
    with pytest.raises(RuntimeError, match="reducer failed"):
        executor.run([good, bad])
    assert good.result is not None and isinstance(bad.error, RuntimeError)


def test_progress_reports_every_sample(tiny, tiny_images):
    seen = []
    task = get_method("ig").plan(tiny, tiny_images[0], 1, make_params("ig", n_steps=10))
    ChunkExecutor(tiny, ChunkSizes(4, 4)).run([task], progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (12, 12) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_smoothgrad_matches_captum_on_efficientnet(effnet, chelsea):
    ours = run(effnet, chelsea, 285, "smoothgrad", chunk=(2, 16), n_samples=4, sigma=0.1, seed=3)
    torch.manual_seed(3)
    ref = NoiseTunnel(Saliency(effnet.module)).attribute(
        chelsea[None], nt_type="smoothgrad", nt_samples=4, stdevs=ours.stats["noise_stdev"],
        target=285, abs=True,
    )[0]
    torch.testing.assert_close(ours.raw, ref, rtol=1e-3, atol=1e-6)
