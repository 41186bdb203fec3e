"""SmoothGrad (Smilkov et al. 2017), SmoothGrad² and VarGrad (Adebayo et al. 2018).

Per noisy copy x + N(0, (sigma * (max x - min x))^2) the attribution is |dS/dx|, as Captum's
NoiseTunnel over Saliency; the reducer keeps running sums of a and a² so memory is bounded:
mean -> SmoothGrad, square -> SmoothGrad² (mean of a²), variance -> VarGrad (E[a²] - E[a]²).
Noise comes from a generator seeded per request and drawn in sample order, so the result does
not depend on how the executor chunks the samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saliency.attribution.executor import ChunkOutput, DeepTask, SampleStream, tensor_bytes
from saliency.attribution.reduce import CHANNEL_REDUCTIONS, reduce_channels
from saliency.attribution.registry import register
from saliency.attribution.requirements import INPUT_GRADIENT
from saliency.attribution.types import Attribution

AGGREGATES = ("mean", "square", "variance")


@dataclass(frozen=True)
class SmoothGradParams:
    n_samples: int = field(default=50, metadata={"min": 1, "max_limit": "max_smoothgrad_samples"})
    # noise std as a fraction of the input's value range
    sigma: float = field(default=0.15, metadata={"min": 0, "max": 1})
    aggregate: str = field(default="mean", metadata={"choices": AGGREGATES})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**63 - 1})
    reduction: str = field(default="max", metadata={"choices": CHANNEL_REDUCTIONS})


@register(
    "smoothgrad", "deep", SmoothGradParams, "SmoothGrad / SmoothGrad² / VarGrad of |dS/dx|", supports=INPUT_GRADIENT,
    enum="METHOD_SMOOTHGRAD", oneof="smoothgrad", fallback="vanilla", samples=lambda p: p.n_samples,
    example={"n_samples": 7},
)
def plan_smoothgrad(model, x: torch.Tensor, target: int, params: SmoothGradParams) -> DeepTask:
    x = x.detach().float().cpu()
    stdev = params.sigma * float(x.max() - x.min())
    generator = torch.Generator().manual_seed(params.seed)
    total = torch.zeros_like(x)
    total_sq = torch.zeros_like(x)
    expected = [0]

    def noisy_copies(start: int, stop: int) -> torch.Tensor:
        assert start == expected[0], "samples must be drawn in order"
        expected[0] = stop
        noise = torch.randn((stop - start, *x.shape), generator=generator)
        return x + stdev * noise

    def accumulate(start: int, out: ChunkOutput) -> None:
        a = out.grads.abs()  # reduced on the model's device: one [C, H, W] comes back, not a chunk
        total.add_(a.sum(0).cpu())
        total_sq.add_(a.pow(2).sum(0).cpu())

    def finish() -> Attribution:
        n = params.n_samples
        mean, mean_sq = total / n, total_sq / n
        attr = {"mean": mean, "square": mean_sq, "variance": mean_sq - mean.pow(2)}[params.aggregate]
        return Attribution(
            "smoothgrad",
            target,
            reduce_channels(attr, params.reduction),
            attr,
            {"noise_stdev": stdev},
        )

    stream = SampleStream(params.n_samples, True, noisy_copies, accumulate, sample_shape=tuple(x.shape))
    # the two running sums, and finish's mean, mean square and variance
    return DeepTask("smoothgrad", target, [stream], finish, held_bytes=tensor_bytes(total, total_sq) + 3 * x.nbytes)
