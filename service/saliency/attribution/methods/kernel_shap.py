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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch.distributions import Categorical

from saliency.attribution.executor import ChunkOutput, DeepTask, SameTensor, SampleStream
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
) -> DeepTask:
    """x [C, H, W] normalised input -> a DeepTask whose map [H, W] is each pixel's segment's phi.

    Two phases: the end coalitions (whose inputs trigger SLIC on the worker thread), then the
    others, whose number is known only once M is (2^M - 2 when enumerating).
    """
    image = SameTensor(x)  # the caller's tensor: plans of one request share it, wherever it is
    x = x.detach().float().cpu()
    lazy = LazySegmentation(model.spec, x, params, segments)
    ends = torch.zeros(2)  # v(1), v(0)
    state: dict[str, torch.Tensor] = {}

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
        elif 2**m <= params.n_samples:
            coalitions = all_coalitions(m)
            weights = shapley_kernel_weights(m, coalitions.sum(1))
        else:
            coalitions = sampled_coalitions(m, params.n_samples - 2, params.seed)
            weights = torch.ones(len(coalitions), dtype=torch.float64)
        # Sampling repeats coalitions (sizes 1 and M - 1 are the likeliest): each distinct one
        # is evaluated once, 7 % fewer model calls at M = 39, 30 % at M = 15 (n = 256).
        distinct, inverse = torch.unique(coalitions, dim=0, return_inverse=True)
        state.update(coalitions=coalitions, weights=weights, distinct=distinct, inverse=inverse)
        state["distinct_scores"] = torch.zeros(len(distinct))
        others.n_samples = len(distinct)

    def other_inputs(start: int, stop: int) -> torch.Tensor:
        return lazy.images(state["distinct"][start:stop])

    def record_others(start: int, out: ChunkOutput) -> None:
        state["distinct_scores"][start : start + len(out.logits)] = out.logits[:, target].float().cpu()

    def finish() -> Attribution:
        scores = state["distinct_scores"][state["inverse"]]
        phi = constrained_shapley_fit(state["coalitions"], scores, state["weights"], float(ends[0]), float(ends[1]))
        stats = {
            "segments": float(lazy.n_segments),
            "samples": float(2 + len(state["distinct"])),  # model calls
            "coalitions": float(2 + len(state["coalitions"])),  # drawn, repeats included
            "exact": float(lazy.n_segments == 1 or 2**lazy.n_segments <= params.n_samples),
            "score_input": float(ends[0]),
            "score_baseline": float(ends[1]),
        }
        return Attribution("kernel_shap", target, segment_map(phi, lazy.labels), phi.float(), stats)

    # The coalitions depend on the segments, n_samples and the seed, not on the target: other
    # targets' tasks share every masked forward.
    first = SampleStream(
        2, False, end_inputs, record_ends, sample_shape=tuple(x.shape),
        share_key=("kernel_shap.ends", image, params.segmentation_key),
    )
    others = SampleStream(
        params.n_samples - 2, False, other_inputs, record_others, after=first, sample_shape=tuple(x.shape),
        share_key=("kernel_shap.coalitions", image, params.segmentation_key, params.n_samples, params.seed),
    )
    return DeepTask("kernel_shap", target, [first, others], finish, held_bytes=coalition_task_bytes(x, params.n_samples, params.n_segments))
