"""The estimated error of a sampled method's map, and error-targeted sampling (`max_map_error`).

A sampled map (RISE, SmoothGrad, GradientSHAP, KernelSHAP, LIME) is a random estimate of the
map it converges to with infinitely many samples. Each such method reports `map_error`, an
estimate of the relative L2 distance between the two, from what its reducer keeps anyway plus
a little more:
- means of samples (RISE, GradientSHAP): the standard error of the mean, from a running sum of
  squares of each sample's map (`mean_error`);
- everything else (SmoothGrad's nonlinear aggregates and channel reductions, the regressions of
  KernelSHAP and LIME): a delete-a-group jackknife over `GROUPS` groups of samples, sample i in
  group i % GROUPS, so the groups do not depend on how many samples there will be; it counts
  the O(1/n) bias of these estimators as well as their variance (`jackknife_error`).
With `max_map_error` > 0 the sample count is a cap: the stream stops at the first of a fixed
ladder of counts (`Checkpoints`) where the estimate is under the target. Every sample computed
is part of the map, and draws are made in sample order, so a stopped map is the map an
untargeted request with that sample count gets. Measurements: docs/engine.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import field
from typing import Any

import torch

from saliency.errors import require

GROUPS = 8  # jackknife groups
GROWTH = math.sqrt(2)  # between checkpoints: the error of a mean shrinks by 2^(-1/4) per step


def max_map_error_field() -> Any:
    """The `max_map_error` field of a sampled method's params (0: off)."""
    return field(
        default=0.0, metadata={"min": 0, "max": 1, "note": "a relative L2 error; 0 turns the target off"}
    )


def require_pilot(method: str, count_field: str, cap: int, target: float, pilot: int) -> None:
    """With a target, the sample count is the cap and must hold at least the pilot stage."""
    if target > 0:
        require(
            cap >= pilot,
            f"{method}.{count_field}",
            f"{cap} is below {pilot}: with max_map_error, {count_field} is the cap and the first stage "
            f"has {pilot} samples (enough for the error estimate to be trusted)",
        )


class Checkpoints:
    """The sample counts at which an error-targeted stream decides whether to stop: `pilot`,
    then GROWTH times the last (rounded up to a multiple of `unit`), then the cap. Without a
    target, the cap alone. Fixed in advance, whatever the estimates: the targets of one request
    stop at different counts but cut their shared slices at the same places."""

    def __init__(self, cap: int, target: float, pilot: int, unit: int = GROUPS):
        points: list[int] = []
        if target > 0:
            size = float(pilot)
            while (n := math.ceil(size / unit - 1e-9) * unit) < cap:
                if not points or n > points[-1]:
                    points.append(n)
                size *= GROWTH
        self.points = (*points, cap)

    def next(self, cursor: int) -> int:
        """The first checkpoint after `cursor` samples (the cap past the last one)."""
        return next((p for p in self.points if p > cursor), self.points[-1])

    def __contains__(self, n: int) -> bool:
        return n in self.points


def relative_error(noise_sq: float, norm_sq: float, bias_sq: float = 0.0) -> float:
    """sqrt(E|e|^2) / |converged map|, E|e|^2 = noise_sq + bias_sq, with |converged|^2 taken as
    |map|^2 - noise_sq (noise lengthens a map on average). inf when the noise is as large as
    the whole map."""
    if not noise_sq + bias_sq > 0:
        return 0.0
    signal = norm_sq - noise_sq
    return math.sqrt((noise_sq + bias_sq) / signal) if signal > 0 else math.inf


def mean_error(
    total: torch.Tensor, total_sq: torch.Tensor, n: int, spatial: tuple[float, float] | None = None
) -> float:
    """The relative error of the map total / n, a mean of n independent sample maps z_i.

    total, total_sq: sums of z_i and z_i^2 [H, W] (float64 for the squares: they are large).
    spatial: (sum_i mean(z_i), sum_i mean(z_i)^2), the sums of each sample's spatial mean: then
    the error is that of the map less its spatial mean (RISE, whose level is arbitrary).
    """
    if n < 2:
        return math.inf
    total, total_sq = total.double(), total_sq.double()
    mean = total / n
    var = ((total_sq - n * mean.square()).clamp_min(0) / (n - 1)).sum()  # sum of per-pixel variances
    if spatial is not None:
        # Var of the centred map's pixels: sum_p Var(z_p) - P Var(mean_p z)
        level, level_sq = spatial
        var = var - mean.numel() * max(level_sq - level * level / n, 0.0) / (n - 1)
        mean = mean - mean.mean()
    return relative_error(max(float(var), 0.0) / n, float(mean.square().sum()))


def jackknife_error(
    full: torch.Tensor, leave_outs: list[torch.Tensor], sizes: list[int], weights: torch.Tensor | None = None
) -> float:
    """The relative error of the map `full`, from its delete-a-group jackknife replicates
    (leave_outs[j]: the map computed without group j, of sizes[j] samples). Both the variance
    and the bias (the fits of KernelSHAP and LIME, SmoothGrad's nonlinear aggregates converge
    with an O(1/n) bias) count, with the unequal-group formulas of Busing, Meijer & van der
    Leeden (1999), which for a mean give a zero bias whatever the sizes. weights: per-element
    weights of the norm (segment areas, when the maps are one value per segment)."""
    if len(leave_outs) < 2:
        return math.inf
    theta = full.double()
    stack = torch.stack([m.double() for m in leave_outs])
    w = torch.ones_like(theta) if weights is None else weights.double()
    g, n = len(sizes), float(sum(sizes))
    keep = torch.tensor([1 - m / n for m in sizes], dtype=torch.float64).reshape(-1, *[1] * theta.dim())
    h = torch.tensor([n / m for m in sizes], dtype=torch.float64).reshape(keep.shape)
    bias = (keep * (stack - theta)).sum(0)
    jack = theta - bias
    pseudo = h * theta - (h - 1) * stack
    var = ((pseudo - jack).square() / (h - 1)).sum(0) / g
    return relative_error(float((var * w).sum()), float((theta.square() * w).sum()), float((bias.square() * w).sum()))


def jackknife_rows(
    full: torch.Tensor, fit: Callable[[torch.Tensor], torch.Tensor], n: int, weights: torch.Tensor | None = None
) -> float:
    """The relative error of `full`, a fit on n sample rows (KernelSHAP, LIME), by the
    delete-a-group jackknife: fit(keep) refits on the rows where keep [n] is True."""
    ids = torch.arange(n) % GROUPS
    groups = range(min(GROUPS, n)) if n > 1 else range(0)
    return jackknife_error(full, [fit(ids != g) for g in groups], [int((ids == g).sum()) for g in groups], weights)
