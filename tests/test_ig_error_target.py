"""Error-targeted Integrated Gradients: `max_map_error` with `n_steps` as the cap.

The path integral is the trapezoid rule in t on nested uniform grids with a = t^2; the map's
error (relative L2 to the converged map) is estimated from the grid and its half grid, and the
grid is refined, reusing every sample, until the estimate is under the target. References: the
same rule written out with numpy on a model whose path gradient is known in closed form, and
on the photographs the distance to a high-n Gauss-Legendre map (an independent rule)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from torch import nn

from helpers import wrap
from saliency.attribution.executor import ChunkExecutor, ChunkReport, ChunkSizes
from saliency.attribution.methods.integrated_gradients import PILOT_STEPS
from saliency.attribution.registry import get_method, make_params
from saliency.errors import InvalidArgument
from saliency.imaging import to_model_input


class Quadratic(nn.Module):
    """logits[c] = sum_i W[c, i] x_i^2 + (V x)_c: the path gradient at a is 2 a W x + V, so IG
    from a zero baseline is exactly W x^2 + V x and the trapezoid's error is known."""

    def __init__(self, size=(6, 6), classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.features = nn.Identity()
        self.w = nn.Parameter(torch.randn(classes, 3 * size[0] * size[1], generator=g))
        self.v = nn.Parameter(0.1 * torch.randn(classes, 3 * size[0] * size[1], generator=g))

    def forward(self, x):
        flat = self.features(x).flatten(1)
        return (flat**2) @ self.w.T + flat @ self.v.T


@pytest.fixture(scope="module")
def quadratic():
    return wrap(Quadratic(), (6, 6), 3, "features")


def run(model, x, target, chunk=(4, 8), **params):
    rows = {True: 0, False: 0}

    def count(report: ChunkReport) -> None:
        rows[report.needs_grad] += report.samples

    executor = ChunkExecutor(model, ChunkSizes(*chunk), count)
    (result,) = executor.run([get_method("ig").plan(model, x, target, make_params("ig", **params))])
    return result, rows


def graded_trapezoid(path_gradient, n: int) -> np.ndarray:
    """The reference rule: trapezoid in t on j / n, j = 0..n, of da/dt g(a(t)), a = t^2."""
    t = np.arange(n + 1) / n
    values = np.stack([2 * ti * path_gradient(ti**2) for ti in t])
    weights = np.full(n + 1, 1 / n)
    weights[[0, -1]] /= 2
    return np.tensordot(weights, values, axes=1)


@pytest.mark.parametrize("goal", [0.2, 0.05, 0.01, 0.002])
def test_the_map_is_the_graded_trapezoid_at_the_grid_it_stops_on(quadratic, goal):
    x = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(2))
    target = 1
    result, rows = run(quadratic, x, target, n_steps=1024, max_map_error=goal)
    n = int(result.stats["n_steps"])
    w, v = (p.detach()[target].double().numpy().reshape(3, 6, 6) for p in (quadratic.module.w, quadratic.module.v))
    xd = x.double().numpy()
    expected = xd * graded_trapezoid(lambda a: 2 * a * w * xd + v, n)
    np.testing.assert_allclose(result.raw.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    exact = w * xd**2 + v * xd  # IG of a quadratic, in closed form
    true_error = np.linalg.norm((expected - exact).sum(0)) / np.linalg.norm(exact.sum(0))
    assert result.stats["map_error"] <= goal  # a smooth integrand: reached long before the cap
    # The error of a smooth integrand falls as 1/n^2, three times faster than the 1/n the scale
    # is measured for: the estimate errs on the safe side here, but not wildly.
    assert true_error <= result.stats["map_error"] <= 4 * true_error
    assert rows[True] == n  # every gradient computed is a node of the final grid: none wasted
    assert rows[False] == 2  # F(x'), F(x): the completeness error
    assert {"completeness_error", "n_steps_cap", "max_map_error", "refinements"} <= set(result.stats)


def test_every_slice_ends_at_a_checkpoint_and_the_cap_is_never_passed(quadratic):
    x = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(3))
    executor = ChunkExecutor(quadratic, ChunkSizes(64, 64))
    calls = []
    original = executor._evaluate

    def spy(inputs, targets, needs_grad, **extras):
        if needs_grad:
            calls.append(len(inputs))
        return original(inputs, targets, needs_grad, **extras)

    executor._evaluate = spy
    task = get_method("ig").plan(quadratic, x, 0, make_params("ig", n_steps=40, max_map_error=1e-6))
    (result,) = executor.run([task])
    # The pilot grid alone (the budget would have taken 40), then the largest multiple of it
    # that the cap allows; the target cannot be met: the estimate says how far it is.
    assert calls == [PILOT_STEPS, 40 - PILOT_STEPS]
    assert result.stats["n_steps"] == 40 == result.stats["n_steps_cap"]
    assert result.stats["map_error"] > 1e-6 and result.stats["refinements"] == 1


def test_packed_with_other_targets_and_work_it_matches_alone(quadratic):
    x = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(4))
    params = make_params("ig", n_steps=512, max_map_error=0.01)
    alone = [run(quadratic, x, t, n_steps=512, max_map_error=0.01)[0] for t in range(3)]
    tasks = [get_method("ig").plan(quadratic, x, t, params) for t in range(3)]
    tasks.append(get_method("ig").plan(quadratic, x.flip(0), 0, make_params("ig", n_steps=9)))
    ChunkExecutor(quadratic, ChunkSizes(5, 8)).run(tasks)
    for task, solo in zip(tasks, alone, strict=False):
        assert task.result.stats["n_steps"] == solo.stats["n_steps"]
        torch.testing.assert_close(task.result.raw, solo.raw, rtol=1e-5, atol=1e-6)


def test_memory_does_not_grow_with_the_cap(quadratic):
    x = torch.zeros(3, 224, 224)

    def held(n_steps):
        return get_method("ig").plan(quadratic, x, 0, make_params("ig", n_steps=n_steps, max_map_error=0.05)).memory_bytes

    assert held(16) == held(1024) <= 8 * 4 * x.numel()


@pytest.mark.parametrize(
    "params, field",
    [
        ({"max_map_error": -0.01}, "ig.max_map_error"),
        ({"max_map_error": 1.5}, "ig.max_map_error"),
        ({"max_map_error": float("nan")}, "ig.max_map_error"),
        ({"max_map_error": 0.05, "n_steps": PILOT_STEPS - 1}, "ig.n_steps"),
    ],
)
def test_bad_targets_and_caps_name_the_field(params, field):
    with pytest.raises(InvalidArgument) as info:
        make_params("ig", **params)
    assert info.value.field == field


PHOTOGRAPHS = ["chelsea", "coffee", "astronaut"]


@pytest.fixture(scope="module")
def references(effnet):
    """photograph -> (input, top class, Gauss-Legendre n=1024 map): the converged map."""
    out = {}
    executor = ChunkExecutor(effnet, ChunkSizes(16, 32))
    for name in PHOTOGRAPHS:
        x = to_model_input(getattr(skimage.data, name)(), effnet.spec)
        with torch.inference_mode():
            target = int(effnet.module(x[None])[0].argmax())
        (ref,) = executor.run([get_method("ig").plan(effnet, x, target, make_params("ig", n_steps=1024))])
        out[name] = x, target, ref.map
    return out


@pytest.mark.slow
@pytest.mark.parametrize("goal", [0.1, 0.05])
@pytest.mark.parametrize("name", PHOTOGRAPHS)
def test_on_the_photographs_the_target_is_met_and_the_estimate_tracks_the_distance(effnet, references, name, goal):
    """EfficientNet-Lite0's path gradients are step functions (ReLU6): the error falls as 1/n,
    the regime the estimate's scale was measured in, so the estimate should be close."""
    x, target, converged = references[name]
    (result,) = ChunkExecutor(effnet, ChunkSizes(16, 32)).run(
        [get_method("ig").plan(effnet, x, target, make_params("ig", n_steps=1024, max_map_error=goal))]
    )
    distance = float((result.map - converged).norm() / converged.norm())
    estimate = result.stats["map_error"]
    assert distance <= goal, (name, distance, estimate)
    assert 0.7 * distance <= estimate <= 1.5 * distance, (name, distance, estimate)
    assert result.stats["n_steps"] <= 1024 // 8  # far fewer than the reference needed


@pytest.mark.gpu
def test_on_cuda_the_same_grid_and_map_as_on_the_cpu(effnet, chelsea):
    """Path points are made on the device; the decisions must not depend on where."""
    from saliency.models import load_model

    on_cuda = load_model("efficientnet_lite0", "cuda")
    params = make_params("ig", n_steps=256, max_map_error=0.05)
    (cpu,) = ChunkExecutor(effnet, ChunkSizes(16, 32)).run([get_method("ig").plan(effnet, chelsea, 285, params)])
    (gpu,) = ChunkExecutor(on_cuda, ChunkSizes(64, 64)).run([get_method("ig").plan(on_cuda, chelsea, 285, params)])
    assert gpu.stats["n_steps"] == cpu.stats["n_steps"]
    assert gpu.stats["map_error"] == pytest.approx(cpu.stats["map_error"], rel=0.05)
    scale = float(cpu.map.abs().max())
    torch.testing.assert_close(gpu.map / scale, cpu.map / scale, rtol=0, atol=5e-3)
