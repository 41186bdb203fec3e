"""DeepLIFT (Shrikumar et al. 2017) with the Rescale rule, as one sample pair on the executor.

attr = (x - x') * m, m the DeepLIFT multipliers of the target logit: the chain rule with every
ReLU / ReLU6 derivative replaced by (f(a) - f(a')) / (a - a'), a and a' the unit's pre-activation
on the input and on the reference (the plain derivative where |a - a'| < 1e-10, as Captum).
Max pooling uses Captum's DeepLIFT max-pool rule (`hooks._RescaleMaxPool`). Linear layers
(conv, linear, BatchNorm in eval mode, average pooling, residual additions, padding) keep
their gradient, which is their exact multiplier. So the summation-to-delta property holds: sum(attr) = F(x) - F(x') up to float error, reported as the completeness error.

The input and its reference are two consecutive samples of one "rescale" stream: the executor
cuts such streams in whole pairs, and the rule (`hooks`) pairs rows 2i, 2i + 1 inside each
rectifier. Their logits give F(x) and F(x') with no extra model call. RevealCancel is not
offered (see docs/propagation.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saliency.attribution.baselines import BASELINES, make_reference, validate_baseline
from saliency.attribution.completeness import completeness_stats
from saliency.attribution.executor import ChunkOutput, DeepPlan, SampleStream, tensor_bytes
from saliency.attribution.limits import Limits
from saliency.attribution.registry import check_supported, register
from saliency.attribution.requirements import INPUT_GRADIENT, RULES_RESCALE, needs
from saliency.attribution.types import Attribution
from saliency.models import LoadedModel


@dataclass(frozen=True)
class DeepLiftParams:
    # zeros of the model input space; black = normalised black pixel (as IG)
    baseline: str = field(default="zeros", metadata={"choices": BASELINES})
    # pixels, for baseline="blur"
    blur_sigma: float = field(default=10.0, metadata={"min": 0, "max": 100, "exclusive_min": True})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**63 - 1})  # for baseline="uniform"
    custom_baseline: torch.Tensor | None = field(default=None, compare=False, repr=False)  # [C, H, W]

    def validate(self, limits: Limits) -> None:
        validate_baseline("deeplift", self.baseline, self.custom_baseline)


@register(
    "deeplift",
    "deep",
    DeepLiftParams,
    "DeepLIFT, Rescale rule (Shrikumar et al. 2017); ReLU and ReLU6 networks",
    signed=True,
    supports=needs(INPUT_GRADIENT, RULES_RESCALE),
    enum="METHOD_DEEPLIFT",
    oneof="deeplift",
    fallback="input_x_gradient",  # DeepLIFT-Rescale's gradient approximation, zero reference
    samples=lambda p: 2,  # the (input, reference) pair
    example={"baseline": "uniform", "seed": 5},
)
def plan_deeplift(model: LoadedModel, x: torch.Tensor, target: int, params: DeepLiftParams) -> DeepPlan:
    """x [C, H, W] normalised input -> a DeepPlan whose map is sum_c attr [H, W], raw attr [C, H, W]."""
    check_supported(["deeplift"], model.spec)  # also when planned directly, not through validation
    x = x.detach().float().cpu()
    reference = make_reference(
        "deeplift", model, x, params.baseline, params.blur_sigma, params.seed, params.custom_baseline
    )
    pair = torch.stack([x, reference])
    outputs: dict[str, torch.Tensor] = {}

    def the_pair(start: int, stop: int) -> torch.Tensor:
        return pair[start:stop]

    def keep(start: int, out: ChunkOutput) -> None:
        outputs["multipliers"] = out.grads[0].detach().float().cpu()
        outputs["scores"] = out.logits[:, target].detach().float().cpu()

    def finish() -> Attribution:
        attr = (x - reference) * outputs["multipliers"]
        f_input, f_reference = (float(v) for v in outputs["scores"])
        gap = f_input - f_reference
        return Attribution(
            "deeplift",
            target,
            attr.sum(0),
            attr,
            {
                **completeness_stats(float(attr.sum()), gap),
                "score_input": f_input,
                "score_baseline": f_reference,
            },
        )

    stream = SampleStream(2, True, the_pair, keep, backward_rule="rescale", sample_shape=tuple(x.shape))
    # the (input, reference) pair and the reference; the multipliers and attr in finish
    return DeepPlan("deeplift", target, [stream], finish, held_bytes=tensor_bytes(pair, reference) + 2 * x.nbytes)
