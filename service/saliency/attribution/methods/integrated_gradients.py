"""Integrated Gradients (Sundararajan et al. 2017) as a sample stream plus a reducer.

attr = (x - x') * sum_i w_i * dS/dx(x' + a_i (x - x')), with (a_i, w_i) from a Riemann rule or
Gauss-Legendre quadrature. Two forward-only samples (the baseline and the input) give
F(x) - F(x') for the completeness error |sum(attr) - (F(x) - F(x'))| / |F(x) - F(x')|.

Error-targeted IG (`max_map_error` > 0, `n_steps` the cap) refines until an estimate of the
map's own error, relative L2 against the converged map, is under the target (`GradedGrid`):
the trapezoid rule in t on nested uniform grids, with a = t^2 (nodes dense near the baseline,
where the path gradient changes most). Why, measured on three photographs: docs/engine.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from saliency.attribution.baselines import BASELINES, make_reference, validate_baseline
from saliency.attribution.completeness import completeness_stats
from saliency.attribution.executor import (
    ChunkOutput,
    DeepPlan,
    SameTensor,
    SampleStream,
    tensor_bytes,
)
from saliency.attribution.limits import Limits
from saliency.attribution.registry import register
from saliency.attribution.requirements import INPUT_GRADIENT
from saliency.attribution.types import Attribution
from saliency.errors import require
from saliency.models import LoadedModel

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


@dataclass(frozen=True)
class IntegratedGradientsParams:
    n_steps: int = field(default=50, metadata={"min": 1, "max_limit": "max_ig_steps"})
    rule: str = field(default="gausslegendre", metadata={"choices": RULES})
    # zeros of the model input space; black = normalised black pixel
    baseline: str = field(default="zeros", metadata={"choices": BASELINES})
    # pixels, for baseline="blur"
    blur_sigma: float = field(default=10.0, metadata={"min": 0, "max": 100, "exclusive_min": True})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**63 - 1})  # for baseline="uniform"
    custom_baseline: torch.Tensor | None = field(default=None, compare=False, repr=False)  # [C, H, W]
    # estimated relative L2 error of the map to stop at (0: off, exactly n_steps by `rule`);
    # above 0 n_steps is the cap and the nested graded grid replaces `rule`
    max_map_error: float = field(
        default=0.0, metadata={"min": 0, "max": 1, "note": "a relative L2 error; 0 turns the target off"}
    )

    def validate(self, limits: Limits) -> None:
        """Rules across fields; each field's own bounds are in its metadata."""
        validate_baseline("ig", self.baseline, self.custom_baseline)
        if self.rule == "riemann_trapezoid":
            require(self.n_steps >= 2, "ig.n_steps", "riemann_trapezoid needs at least 2 steps")
        if self.max_map_error > 0:
            require(
                self.n_steps >= PILOT_STEPS,
                "ig.n_steps",
                f"{self.n_steps} is below {PILOT_STEPS}: with max_map_error, n_steps is the cap and the "
                f"first grid has {PILOT_STEPS} steps (the fewest whose half grid still gives an estimate)",
            )


def quadrature(rule: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of n points on [0, 1] for the path integral."""
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1), 0.5 * weights
    if rule == "riemann_trapezoid":
        weights = np.full(n, 1 / (n - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, n), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (np.arange(n) + offset) / n, np.full(n, 1 / n)


PILOT_STEPS = 8  # the first grid of error-targeted IG
# error(T_n) / |T_n - T_n/2| (map space, relative), measured on chelsea, coffee and astronaut for
# n = 16..256: 0.43-0.65, median 0.60 (docs/engine.md): the two grids' errors partly cancel.
ERROR_SCALE = 0.6
# Aim 15 % under the target when choosing the next grid: a grid that falls short costs at least
# as many samples again (the next grid is a multiple of it). Measured on the three photographs
# at 10, 5 and 2 %: 1.15 reached every target in one refinement; 1.0 needed two in 3 of 9.
AIM = 1.15


class GradedGrid:
    """The path integral of error-targeted IG: trapezoid in t on nested uniform grids, a = t^2.

    Grid n has nodes t_j = j / n, j = 1..n, weights (1/n) * da/dt = 2 t_j / n (half at t = 1);
    t = 0 has weight 0 (da/dt = 0), so the baseline's gradient is never needed. Every other node
    of grid n forms grid n/2, so the map's error is estimated at any grid from T_n - T_n/2 with
    three sums [C, H, W] (even nodes, odd nodes, t = 1), whatever n: memory does not grow.

    Stages: grid PILOT_STEPS, then grid n * m (every earlier node is a node of it, nothing is
    recomputed) with m from the estimate and the convergence rate (at least 2: the next grid
    contains this one; at most what the cap allows), until the estimate is under the target or
    the cap is reached. Sample i is one new node; its stage's last sample is a
    checkpoint, where the consumer decides.
    """

    def __init__(self, cap: int, target: float, delta: torch.Tensor):
        self.cap, self.target, self.delta = cap, target, delta
        self.stages: list[tuple[int, int, int]] = [(0, PILOT_STEPS, 0)]  # (first sample, n, m)
        self.even = torch.zeros_like(delta)  # sum of 2 t_j g(a_j) over even j of the current grid
        self.odd = torch.zeros_like(delta)
        self.last = torch.zeros_like(delta)  # g(1), the gradient at the input
        self.estimates: list[float] = []
        self.done = False

    @property
    def n(self) -> int:
        """The current (or final) grid's size: samples once its stage is complete."""
        return self.stages[-1][1]

    def nodes(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples [start, stop) of the current stage -> (t [n] float64, parity of j [n] bool)."""
        first, n, m = self.stages[-1]
        k = torch.arange(start - first, stop - first, dtype=torch.int64)
        j = k + 1 if m == 0 else (k // (m - 1)) * m + k % (m - 1) + 1  # skip the old nodes j % m == 0
        return j.double() / n, j % 2 == 0

    def alphas(self, start: int, stop: int) -> torch.Tensor:
        return (self.nodes(start, stop)[0] ** 2).float()

    def add(self, start: int, grads: torch.Tensor) -> bool:
        """Fold the gradients [n, C, H, W] of samples [start, ...) in; at the end of a stage,
        decide: return True when the integral is final."""
        stop = start + len(grads)
        t, even = self.nodes(start, stop)
        w = (2 * t).to(grads)[:, None, None, None] * grads  # da/dt g(a)
        self.even.add_(w[even.to(grads.device)].sum(0).cpu())
        self.odd.add_(w[~even.to(grads.device)].sum(0).cpu())
        if bool((t == 1).any()):
            self.last.copy_(grads[int((t == 1).nonzero()[0, 0])].cpu())
        if stop == self.n:
            self._decide()
        return self.done

    def integral(self) -> torch.Tensor:
        """sum_j w_j g(a_j) on the current grid [C, H, W]."""
        return (self.even + self.odd - self.last) / self.n

    def _decide(self) -> None:
        n = self.n
        full = (self.delta * self.integral()).sum(0)
        half = (self.delta * 2 * (self.even - self.last) / n).sum(0)
        norm, gap = float(full.norm()), float((full - half).norm())
        estimate = ERROR_SCALE * gap / norm if norm > 0 else (0.0 if gap == 0 else math.inf)
        self.estimates.append(estimate)
        # Error ~ n^-p: p = 1 measured from the first grid on with the zero baseline; after a
        # refinement, p as this path showed it (it is lower from noise or black baselines).
        p = 1.0
        if len(self.estimates) > 1 and 0 < estimate < math.inf:
            shrunk = math.log(self.estimates[-2] / estimate) / math.log(n / self.stages[-2][1])
            p = min(max(shrunk, 0.5), 2.0)
        wanted = (estimate / self.target) ** (1 / p) * AIM if estimate < math.inf else 2
        m = min(max(2, math.ceil(wanted)), self.cap // n)
        if estimate <= self.target or m < 2:
            self.done = True
            return
        if m % 2 == 0:  # old node j becomes j * m: even, whatever its parity was
            self.even.add_(self.odd)
            self.odd.zero_()
        self.stages.append((n, n * m, m))

    def checkpoint(self, cursor: int) -> int:
        return self.n


def make_baseline(model: LoadedModel, x: torch.Tensor, params: IntegratedGradientsParams) -> torch.Tensor:
    """The reference input x' [C, H, W] in the model's input space (attribution/baselines.py)."""
    return make_reference(
        "ig", model, x, params.baseline, params.blur_sigma, params.seed, params.custom_baseline
    )


def baseline_key(params: IntegratedGradientsParams) -> tuple:
    """What the baseline depends on besides the input (a custom one by identity)."""
    custom = None if params.custom_baseline is None else SameTensor(params.custom_baseline)
    return params.baseline, params.blur_sigma, params.seed, custom


@register(
    "ig", "deep", IntegratedGradientsParams, "Integrated Gradients (Sundararajan et al. 2017)", signed=True,
    supports=INPUT_GRADIENT, enum="METHOD_INTEGRATED_GRADIENTS", oneof="integrated_gradients",
    # IG's one-point (first-order) approximation with a zero baseline
    fallback="input_x_gradient",
    samples=lambda p: p.n_steps + 2,  # path points and the two endpoints (the cap, error-targeted)
    example={"n_steps": 9},
)
def plan_integrated_gradients(
    model: LoadedModel, x: torch.Tensor, target: int, params: IntegratedGradientsParams
) -> DeepPlan:
    """x [C, H, W] normalised input -> a DeepPlan whose result map is sum_c attr [H, W]."""
    image = SameTensor(x)  # the caller's tensor: plans of one request share it, wherever it is
    x = x.detach().float().cpu()
    baseline = make_baseline(model, x, params)
    delta = x - baseline
    endpoint_logits = torch.zeros(2)
    # Path points are made where the model runs: on a GPU, n inputs are not copied over (the
    # copies cost more than the model calls there: docs/engine.md).
    on_device = [t.to(model.device) for t in (baseline, delta)]
    if params.max_map_error > 0:
        grid = GradedGrid(params.n_steps, params.max_map_error, delta)
        state = [grid.even, grid.odd, grid.last]

        def path_points(start: int, stop: int) -> torch.Tensor:
            start_point, direction = on_device
            return start_point + grid.alphas(start, stop).to(direction.device)[:, None, None, None] * direction

        def add_gradients(start: int, out: ChunkOutput) -> None:
            if grid.add(start, out.grads):
                path.n_samples = grid.n  # under the target, or at the cap: no further sample

        def path_integral() -> tuple[torch.Tensor, dict[str, float]]:
            stats = {
                "n_steps": float(grid.n),
                "n_steps_cap": float(params.n_steps),
                "map_error": grid.estimates[-1],
                "max_map_error": params.max_map_error,
                "refinements": float(len(grid.stages) - 1),
            }
            return grid.integral(), stats

        checkpoint = grid.checkpoint
    else:
        alphas, weights = quadrature(params.rule, params.n_steps)
        alphas_t = torch.tensor(alphas, dtype=torch.float32).to(model.device)
        weights_t = torch.tensor(weights, dtype=torch.float32)
        path_grad_sum = torch.zeros_like(x)
        state = [path_grad_sum, alphas_t]

        def path_points(start: int, stop: int) -> torch.Tensor:
            start_point, direction = on_device
            return start_point + alphas_t[start:stop, None, None, None] * direction

        def add_gradients(start: int, out: ChunkOutput) -> None:
            w = weights_t[start : start + len(out.grads)].to(out.grads)
            path_grad_sum.add_((w[:, None, None, None] * out.grads).sum(0).cpu())

        def path_integral() -> tuple[torch.Tensor, dict[str, float]]:
            return path_grad_sum, {"n_steps": float(params.n_steps)}

        checkpoint = None

    def endpoints(start: int, stop: int) -> torch.Tensor:
        return torch.stack([baseline, x])[start:stop]

    def record_endpoints(start: int, out: ChunkOutput) -> None:
        endpoint_logits[start : start + len(out.logits)] = out.logits[:, target].cpu()

    def finish() -> Attribution:
        integral, stats = path_integral()
        attr = delta * integral
        f_baseline, f_input = float(endpoint_logits[0]), float(endpoint_logits[1])
        gap = f_input - f_baseline
        return Attribution(
            "ig",
            target,
            attr.sum(0),
            attr,
            {
                **completeness_stats(float(attr.sum()), gap),
                "score_input": f_input,
                "score_baseline": f_baseline,
                **stats,
            },
        )

    # With a target, n_samples is the cap until the grid stops (add_gradients lowers it).
    path = SampleStream(
        params.n_steps, True, path_points, add_gradients, sample_shape=tuple(x.shape), checkpoint=checkpoint
    )
    return DeepPlan(
        "ig",
        target,
        [
            path,
            # F(x') and F(x) do not depend on the target: shared with the other targets' tasks.
            SampleStream(
                2, False, endpoints, record_endpoints, sample_shape=tuple(x.shape),
                share_key=("ig.endpoints", image, *baseline_key(params)),
            ),
        ],
        finish,
        # baseline, delta, the gradient sums, their device copies, and attr in finish (with a
        # target also the integral and the two maps its estimate compares)
        held_bytes=tensor_bytes(baseline, delta, *state, *on_device)
        + (delta.nbytes if params.max_map_error == 0 else 2 * delta.nbytes + 2 * delta[0].nbytes),
    )
