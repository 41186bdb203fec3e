"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019) as one sample.

The relevance of the output is the target logit (one-hot times logit, as Captum); every conv /
linear layer redistributes its output's relevance to its inputs by `rule` (epsilon, gamma,
alpha1_beta0, alpha2_beta1), BatchNorm folded into the conv before it, average pooling and
residual additions in proportion to contributions, max pooling winner-take-all, activations
pass-through (`instrument/relevance.py`). The map is the input relevance summed over
channels; the stats say how much of the logit reached the input (biases and epsilon absorb
the rest; alpha-beta's beta part moves it by design).

One gradient sample per map, run on the executor under its `RelevanceRules`: maps with the
same rule and parameters share chunks, and the rule lives only in that chunk's autograd graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saliency.attribution.executor import ChunkOutput, DeepPlan, SampleStream
from saliency.attribution.registry import check_supported, register
from saliency.attribution.requirements import INPUT_GRADIENT, RULES_LRP, needs
from saliency.attribution.types import Attribution
from saliency.instrument.relevance import LRP_RULES, RelevanceRules
from saliency.models import LoadedModel

MAX_EPSILON = 1e3
MAX_GAMMA = 100.0


@dataclass(frozen=True)
class LrpParams:
    # the rule of every conv / linear layer
    rule: str = field(default="epsilon", metadata={"choices": LRP_RULES})
    # rules epsilon and gamma: stabilizer added to each layer's output, in its units (0: LRP-0)
    epsilon: float = field(default=0.25, metadata={"min": 0, "max": MAX_EPSILON})
    # rule="gamma": weight given to positive contributions, z_ij + gamma * max(z_ij, 0)
    gamma: float = field(default=0.25, metadata={"min": 0, "max": MAX_GAMMA})

    def rules(self) -> RelevanceRules:
        return RelevanceRules(self.rule, float(self.epsilon), float(self.gamma))


@register(
    "lrp",
    "deep",
    LrpParams,
    "Layer-wise Relevance Propagation, epsilon / gamma / alpha-beta rules (Bach et al. 2015)",
    signed=True,
    supports=needs(INPUT_GRADIENT, RULES_LRP),
    enum="METHOD_LRP",
    oneof="lrp",
    fallback="input_x_gradient",  # LRP-0 on a ReLU network is gradient x input
    samples=lambda p: 1,
    example={"rule": "gamma", "gamma": 0.5},
)
def plan_lrp(model: LoadedModel, x: torch.Tensor, target: int, params: LrpParams) -> DeepPlan:
    """x [C, H, W] normalised input -> a DeepPlan whose map is sum_c R [H, W], raw R [C, H, W]."""
    check_supported(["lrp"], model.spec)  # also when planned directly, not through validation
    x = x.detach().float().cpu()
    outputs: dict[str, torch.Tensor] = {}

    def the_input(start: int, stop: int) -> torch.Tensor:
        return x[None]

    def keep(start: int, out: ChunkOutput) -> None:
        outputs["relevance"] = out.grads[0].detach().float().cpu()
        outputs["score"] = out.logits[0, target].detach().float().cpu()

    def finish() -> Attribution:
        relevance, score = outputs["relevance"], float(outputs["score"])
        total = float(relevance.sum())
        return Attribution(
            "lrp",
            target,
            relevance.sum(0),
            relevance,
            {
                "score": score,
                "relevance_sum": total,
                # the share of the logit that did not reach the input (biases, epsilon, beta)
                "conservation_error": abs(total - score) / max(abs(score), 1e-12),
            },
        )

    stream = SampleStream(1, True, the_input, keep, backward_rule=params.rules(), sample_shape=tuple(x.shape))
    return DeepPlan("lrp", target, [stream], finish, held_bytes=x.nbytes)  # the relevance [C, H, W]
