"""SmoothGrad (Smilkov et al. 2017), SmoothGrad² and VarGrad (Adebayo et al. 2018).

Per noisy copy x + N(0, (sigma * (max x - min x))^2) the attribution is |dS/dx|, as Captum's
NoiseTunnel over Saliency; the reducer keeps running sums of a and a² so memory is bounded:
mean -> SmoothGrad, square -> SmoothGrad² (mean of a²), variance -> VarGrad (E[a²] - E[a]²).
Noise comes from a generator seeded per request and drawn in sample order, so the result does
not depend on how the executor chunks the samples.

`map_error` is a delete-a-group jackknife (attribution/map_error.py): the sums are kept per
group of samples (sample i in group i % GROUPS), and the map is recomputed without each group
in turn, which covers the nonlinear aggregates and channel reductions alike. With
`max_map_error` > 0, n_samples is the cap and the stream stops at the first checkpoint where
the estimate is under the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saliency.attribution.executor import ChunkOutput, DeepPlan, SampleStream, tensor_bytes
from saliency.attribution.limits import Limits
from saliency.attribution.map_error import (
    GROUPS,
    Checkpoints,
    jackknife_error,
    max_map_error_field,
    require_pilot,
)
from saliency.attribution.reduce import CHANNEL_REDUCTIONS, reduce_channels
from saliency.attribution.registry import register
from saliency.attribution.requirements import INPUT_GRADIENT
from saliency.attribution.types import Attribution

AGGREGATES = ("mean", "square", "variance")
PILOT_SAMPLES = 16  # the first stage of error-targeted SmoothGrad: two samples per jackknife group


@dataclass(frozen=True)
class SmoothGradParams:
    n_samples: int = field(default=50, metadata={"min": 1, "max_limit": "max_smoothgrad_samples"})
    # noise std as a fraction of the input's value range
    sigma: float = field(default=0.15, metadata={"min": 0, "max": 1})
    aggregate: str = field(default="mean", metadata={"choices": AGGREGATES})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**63 - 1})
    reduction: str = field(default="max", metadata={"choices": CHANNEL_REDUCTIONS})
    # estimated relative L2 error of the map to stop at; 0: exactly n_samples
    max_map_error: float = max_map_error_field()

    def validate(self, limits: Limits) -> None:
        """Rules across fields; each field's own bounds are in its metadata."""
        require_pilot("smoothgrad", "n_samples", self.n_samples, self.max_map_error, PILOT_SAMPLES)


@register(
    "smoothgrad", "deep", SmoothGradParams, "SmoothGrad / SmoothGrad² / VarGrad of |dS/dx|", supports=INPUT_GRADIENT,
    enum="METHOD_SMOOTHGRAD", oneof="smoothgrad", fallback="vanilla", samples=lambda p: p.n_samples,
    example={"n_samples": 7},
)
def plan_smoothgrad(model, x: torch.Tensor, target: int, params: SmoothGradParams) -> DeepPlan:
    x = x.detach().float().cpu()
    stdev = params.sigma * float(x.max() - x.min())
    generator = torch.Generator().manual_seed(params.seed)
    stages = Checkpoints(params.n_samples, params.max_map_error, PILOT_SAMPLES)
    # Per jackknife group: sums of a and of a^2 (only those the aggregate uses) and counts.
    moments = {"mean": (1,), "square": (2,), "variance": (1, 2)}[params.aggregate]
    sums = {k: torch.zeros(GROUPS, *x.shape) for k in moments}
    counts = torch.zeros(GROUPS, dtype=torch.int64)
    expected = [0]
    used = [params.n_samples]
    errors: list[float] = []

    def noisy_copies(start: int, stop: int) -> torch.Tensor:
        assert start == expected[0], "samples must be drawn in order"
        expected[0] = stop
        noise = torch.randn((stop - start, *x.shape), generator=generator)
        return x + stdev * noise

    def attribution(totals: dict[int, torch.Tensor], n: int) -> torch.Tensor:
        """The aggregate [C, H, W] of n samples whose sums of a^k are totals[k]."""
        if params.aggregate == "mean":
            return totals[1] / n
        if params.aggregate == "square":
            return totals[2] / n
        return totals[2] / n - (totals[1] / n).pow(2)

    def maps() -> tuple[torch.Tensor, torch.Tensor, float]:
        """(attr [C, H, W], its map [H, W], the map's estimated error)."""
        totals = {k: v.sum(0) for k, v in sums.items()}
        n = int(counts.sum())
        attr = attribution(totals, n)
        saliency = reduce_channels(attr, params.reduction)
        groups = [g for g in range(GROUPS) if 0 < counts[g] < n]
        leave_outs = [
            reduce_channels(attribution({k: totals[k] - sums[k][g] for k in totals}, n - int(counts[g])), params.reduction)
            for g in groups
        ]
        return attr, saliency, jackknife_error(saliency, leave_outs, [int(counts[g]) for g in groups])

    def accumulate(start: int, out: ChunkOutput) -> None:
        a = out.grads.abs()  # reduced on the model's device: [GROUPS, C, H, W] comes back, not a chunk
        stop = start + len(a)
        ids = torch.arange(start, stop) % GROUPS  # sample i is in group i % GROUPS
        on_device = ids.to(a.device)
        for k in moments:
            sums[k].add_(a.new_zeros(GROUPS, *a.shape[1:]).index_add_(0, on_device, a.pow(k)).cpu())
        counts.add_(torch.bincount(ids, minlength=GROUPS))
        if params.max_map_error > 0 and stop in stages:
            errors.append(maps()[2])
            if errors[-1] <= params.max_map_error or stop == params.n_samples:
                used[0] = stream.n_samples = stop  # no further sample

    def finish() -> Attribution:
        attr, saliency, error = maps()
        stats = {"noise_stdev": stdev, "n_samples": float(used[0]), "map_error": error}
        if params.max_map_error > 0:
            stats.update(n_samples_cap=float(params.n_samples), max_map_error=params.max_map_error)
        return Attribution("smoothgrad", target, saliency, attr, stats)

    stream = SampleStream(
        params.n_samples, True, noisy_copies, accumulate, sample_shape=tuple(x.shape),
        checkpoint=stages.next if params.max_map_error > 0 else None,
    )
    # the group sums, and finish's totals, attr, map and the leave-one-group-out maps
    held = tensor_bytes(*sums.values()) + (len(moments) + 2) * x.nbytes + (GROUPS + 1) * x[0].nbytes
    return DeepPlan("smoothgrad", target, [stream], finish, held_bytes=held)
