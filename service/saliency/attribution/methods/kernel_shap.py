"""KernelSHAP (Lundberg & Lee 2017) over SLIC superpixels, forward-only.

The Shapley values phi [M] of the game v(z) = F(image with the segments of z kept, the others
set to the baseline), F the target logit, are the solution of a weighted least-squares fit of
v(z) ~ v(0) + z . phi under the Shapley kernel k(M, |z|) = (M - 1) / (C(M, |z|) |z| (M - |z|)),
subject to efficiency: sum(phi) = v(1) - v(0).

Coalitions: with n_samples >= 2^M every coalition is enumerated and weighted by the kernel, which
gives the exact Shapley values. Otherwise they are sampled as Captum's `KernelShap` does -- size
k with probability proportional to (M - 1) / (k (M - k)), then a uniform subset of that size
(the kernel's weight is then in the sampling, so every sample has weight 1) -- drawing from a
generator seeded with `seed` in Captum's order, so the same seed gives Captum's coalitions.
The first two samples are z = 1 and z = 0 (also as Captum).

Efficiency is exact, as in the shap package (Captum approximates it with weight 1e6 on the two
end samples): phi = delta / M + Q u, with Q [M, M-1] an orthonormal basis of the vectors summing
to 0 and u the minimum-norm least-squares solution, so underdetermined fits (fewer samples than
segments) are symmetric in the segments.

The map gives each pixel its segment's phi; raw is phi [M].

`map_error` is a delete-a-group jackknife of the fit (attribution/map_error.py: phi refitted
without each group of sampled coalitions, coalition i in group i % GROUPS), the maps' norms
weighted by segment area; 0 when every coalition is enumerated (exact). With `max_map_error` >
0, n_samples is the cap: coalitions are drawn in order (the first N of the cap are those of
n = N), each distinct one evaluated at its first appearance, and the stream stops at the first
checkpoint where the estimate is under the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch.distributions import Categorical

from saliency.attribution.executor import ChunkOutput, DeepPlan, SameTensor, SampleStream
from saliency.attribution.limits import Limits
from saliency.attribution.map_error import (
    Checkpoints,
    jackknife_rows,
    max_map_error_field,
    require_pilot,
)
from saliency.attribution.registry import register
from saliency.attribution.superpixels import (
    SEGMENTS,
    LazySegmentation,
    SegmentationParams,
    SegmentCache,
    segment_map,
)
from saliency.attribution.types import Attribution
from saliency.models import LoadedModel


@dataclass(frozen=True)
class KernelShapParams(SegmentationParams):
    method: ClassVar[str] = "kernel_shap"
    # model calls, including the two end coalitions (all kept, all off)
    n_samples: int = field(
        default=256,
        metadata={"min": 2, "max_limit": "max_kernel_shap_samples", "note": "two samples are the all-kept and all-off images"},
    )
    # estimated relative L2 error of the map to stop at; 0: exactly n_samples
    max_map_error: float = max_map_error_field()

    def validate(self, limits: Limits) -> None:
        """Rules across fields; each field's own bounds are in its metadata."""
        require_pilot("kernel_shap", "n_samples", self.n_samples, self.max_map_error, PILOT_SAMPLES)


PILOT_SAMPLES = 64  # the first stage of error-targeted KernelSHAP (as LIME's), the two ends included


def shapley_kernel_weights(m: int, sizes: torch.Tensor) -> torch.Tensor:
    """The Shapley kernel k(M, |z|) for 0 < |z| < M, float64 like `sizes`."""
    sizes = sizes.double()
    return (m - 1) / (torch.tensor([math.comb(m, int(s)) for s in sizes], dtype=torch.float64) * sizes * (m - sizes))


def all_coalitions(m: int) -> torch.Tensor:
    """[2^M - 2, M] bool: every coalition except the empty and the full one."""
    codes = torch.arange(1, 2**m - 1)
    return (codes[:, None] >> torch.arange(m)) & 1 == 1


def sampled_coalitions(m: int, n: int, seed: int) -> torch.Tensor:
    """[n, M] bool, Captum's KernelShap sampling (same seed, same coalitions); M >= 2."""
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.arange(m, dtype=torch.float)
    probs = torch.tensor(m - 1) / (sizes * (m - sizes))
    probs[0] = 0.0
    probs = Categorical(probs).probs.reshape(1, m)  # normalised exactly as Captum's Categorical
    rows = torch.empty(n, m, dtype=torch.bool)
    for i in range(n):
        k = int(torch.multinomial(probs, 1, True, generator=generator))
        values = torch.randn(1, m, generator=generator)
        rows[i] = (values > torch.kthvalue(values, m - k).values.item())[0]
    return rows


def constrained_shapley_fit(
    coalitions: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor, score_full: float, score_empty: float
) -> torch.Tensor:
    """Weighted least squares of scores - score_empty ~ coalitions . phi, sum(phi) = delta.

    coalitions [n, M] bool, scores [n], weights [n] -> phi [M] float64 (minimum norm when the
    samples do not determine it).
    """
    m = coalitions.shape[1]
    delta = score_full - score_empty
    even = torch.full((m,), delta / m, dtype=torch.float64)
    if m == 1 or len(coalitions) == 0:
        return even
    z = coalitions.double()
    # Orthonormal basis of {v : sum(v) = 0}: the last M - 1 columns of a complete QR of 1.
    basis = torch.linalg.qr(torch.ones(m, 1, dtype=torch.float64), mode="complete").Q[:, 1:]
    root_w = weights.double().sqrt()[:, None]
    design = root_w * (z @ basis)
    residual = root_w[:, 0] * (scores.double() - score_empty - z @ even)
    u = torch.linalg.lstsq(design, residual[:, None], driver="gelsd").solution[:, 0]
    return even + basis @ u


def first_appearances(coalitions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, M] bool -> (the distinct rows in order of first appearance [d, M], inverse [n]: the
    index of each row among them), so the first k draws need only a prefix of the distinct rows."""
    distinct, inverse = torch.unique(coalitions, dim=0, return_inverse=True)
    first = torch.full((len(distinct),), len(coalitions), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(len(coalitions)), reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return distinct[order], rank[inverse]


def coalition_task_bytes(x: torch.Tensor, n_samples: int, n_segments: int) -> int:
    """Estimated bytes a superpixel task (KernelSHAP, LIME) holds besides its chunks, for x
    [C, H, W]: its segment labels (int32 [H, W], kept even if the cache lets them go) and
    baseline image, the coalitions (bool [n, M], with their distinct copy) and a few numbers
    per sample, and the float64 least-squares fit of `finish` (about four [n, M] arrays). M is
    taken as n_segments, SLIC's target."""
    height, width = x.shape[-2:]
    per_coalition = n_segments * (2 + 4 * 8) + 4 * 8
    return 4 * height * width + 4 * x.numel() + n_samples * per_coalition


@register(
    "kernel_shap",
    "deep",
    KernelShapParams,
    "KernelSHAP over SLIC superpixels: Shapley values of the target logit (Lundberg & Lee 2017)",
    signed=True,
    enum="METHOD_KERNEL_SHAP",
    oneof="kernel_shap",
    fallback="gradcam",  # coarse regions, as superpixels are
    samples=lambda p: p.n_samples,
    example={"n_samples": 20, "n_segments": 9, "compactness": 100.0, "baseline": "segment_mean"},
)
def plan_kernel_shap(
    model: LoadedModel, x: torch.Tensor, target: int, params: KernelShapParams, segments: SegmentCache = SEGMENTS
) -> DeepPlan:
    """x [C, H, W] normalised input -> a DeepPlan whose map [H, W] is each pixel's segment's phi.

    Two phases: the end coalitions (whose inputs trigger SLIC on the worker thread), then the
    others, whose number is known only once M is (2^M - 2 when enumerating).
    """
    image = SameTensor(x)  # the caller's tensor: plans of one request share it, wherever it is
    x = x.detach().float().cpu()
    lazy = LazySegmentation(model.spec, x, params, segments)
    ends = torch.zeros(2)  # v(1), v(0)
    state: dict[str, torch.Tensor] = {}
    stages = Checkpoints(params.n_samples, params.max_map_error, PILOT_SAMPLES)
    used = [params.n_samples]  # coalitions drawn, ends included
    errors: list[float] = []

    def end_inputs(start: int, stop: int) -> torch.Tensor:
        both = torch.tensor([[True], [False]]).expand(2, lazy.n_segments)
        return lazy.images(both[start:stop])

    def record_ends(start: int, out: ChunkOutput) -> None:
        ends[start : start + len(out.logits)] = out.logits[:, target].float().cpu()
        if start + len(out.logits) < 2:
            return
        m = lazy.n_segments
        if m == 1:
            coalitions, weights = torch.zeros(0, 1, dtype=torch.bool), torch.zeros(0, dtype=torch.float64)
        elif exact():
            coalitions = all_coalitions(m)
            weights = shapley_kernel_weights(m, coalitions.sum(1))
        else:
            coalitions = sampled_coalitions(m, params.n_samples - 2, params.seed)
            weights = torch.ones(len(coalitions), dtype=torch.float64)
        # Sampling repeats coalitions (sizes 1 and M - 1 are the likeliest): each distinct one
        # is evaluated once, 7 % fewer model calls at M = 39, 30 % at M = 15 (n = 256), at its
        # first appearance, so the first k draws are evaluated by a prefix of the stream.
        distinct, inverse = first_appearances(coalitions)
        state.update(coalitions=coalitions, weights=weights, distinct=distinct, inverse=inverse)
        state["distinct_scores"] = torch.zeros(len(distinct))
        others.n_samples = len(distinct)
        # Checkpoints in the stream's units: distinct coalitions among the first n - 2 draws.
        seen = torch.zeros(len(coalitions) + 1, dtype=torch.int64)
        if len(coalitions):
            new = torch.ones(len(coalitions), dtype=torch.int64)
            new[1:] = (inverse[1:] > torch.cummax(inverse, 0).values[:-1]).long()
            seen[1:] = new.cumsum(0)
        state["evaluated_by"] = seen  # [k]: distinct coalitions among the first k draws

    def exact() -> bool:
        return lazy.n_segments == 1 or 2**lazy.n_segments <= params.n_samples

    def draws_at(evaluated: int) -> int:
        """The most draws (ends included) at a checkpoint that `evaluated` distinct coalitions cover."""
        seen = state["evaluated_by"]
        return max(p for p in stages.points if int(seen[min(p - 2, len(seen) - 1)]) <= evaluated)

    def checkpoint(cursor: int) -> int:
        if "evaluated_by" not in state or exact():
            return others.n_samples
        seen = state["evaluated_by"]
        return min(
            (e for p in stages.points if (e := int(seen[min(p - 2, len(seen) - 1)])) > cursor), default=others.n_samples
        )

    def other_inputs(start: int, stop: int) -> torch.Tensor:
        return lazy.images(state["distinct"][start:stop])

    def fit(n: int) -> tuple[torch.Tensor, float]:
        """(phi, map_error) of the fit on the first n - 2 coalitions drawn."""
        k = len(state["coalitions"]) if exact() else n - 2
        z, w = state["coalitions"][:k], state["weights"][:k]
        scores = state["distinct_scores"][state["inverse"][:k]]
        v1, v0 = float(ends[0]), float(ends[1])
        phi = constrained_shapley_fit(z, scores, w, v1, v0)
        if exact():
            return phi, 0.0
        areas = torch.bincount(lazy.labels.flatten().long(), minlength=lazy.n_segments)
        error = jackknife_rows(phi, lambda keep: constrained_shapley_fit(z[keep], scores[keep], w[keep], v1, v0), k, areas)
        return phi, error

    def record_others(start: int, out: ChunkOutput) -> None:
        state["distinct_scores"][start : start + len(out.logits)] = out.logits[:, target].float().cpu()
        stop = start + len(out.logits)
        if params.max_map_error > 0 and not exact() and stop == checkpoint(start):
            n = draws_at(stop)
            errors.append(fit(n)[1])
            if errors[-1] <= params.max_map_error or n == params.n_samples:
                used[0] = n
                others.n_samples = stop  # no further coalition

    def finish() -> Attribution:
        phi, error = fit(used[0])
        drawn = len(state["coalitions"]) if exact() else used[0] - 2
        stats = {
            "segments": float(lazy.n_segments),
            "samples": float(2 + others.n_samples),  # model calls
            "coalitions": float(2 + drawn),  # drawn, repeats included
            "exact": float(exact()),
            "score_input": float(ends[0]),
            "score_baseline": float(ends[1]),
            "n_samples": float(used[0]),
            "map_error": error,
        }
        if params.max_map_error > 0:
            stats.update(n_samples_cap=float(params.n_samples), max_map_error=params.max_map_error)
        return Attribution("kernel_shap", target, segment_map(phi, lazy.labels), phi.float(), stats)

    # The coalitions depend on the segments, n_samples and the seed, not on the target: other
    # targets' tasks share every masked forward (cut at the same checkpoints).
    first = SampleStream(
        2, False, end_inputs, record_ends, sample_shape=tuple(x.shape),
        share_key=("kernel_shap.ends", image, params.segmentation_key),
    )
    others = SampleStream(
        params.n_samples - 2, False, other_inputs, record_others, after=first, sample_shape=tuple(x.shape),
        share_key=("kernel_shap.coalitions", image, params.segmentation_key, params.n_samples, params.seed, stages.points),
        checkpoint=checkpoint if params.max_map_error > 0 else None,
    )
    return DeepPlan("kernel_shap", target, [first, others], finish, held_bytes=coalition_task_bytes(x, params.n_samples, params.n_segments))
