"""GradientSHAP (Lundberg & Lee 2017) and Expected Gradients (Erion et al. 2021).

For each of n samples i: a reference b_i drawn uniformly (with replacement) from a reference
set, alpha_i ~ U[0, 1] and, when stdev > 0, x~_i = x + N(0, (stdev * (max x - min x))^2);
the gradient is taken at b_i + alpha_i (x~_i - b_i) and

    attr = 1/n sum_i (x~_i - b_i) * dS/dx(b_i + alpha_i (x~_i - b_i))      [C, H, W]

as Captum's GradientShap (and SHAP's GradientExplainer): the difference uses the noisy input.
With stdev = 0 and real images as references this is Expected Gradients. Completeness holds
only in expectation: E[sum attr] = F(x) - E[F(b)] (exactly so for stdev = 0, as n grows), so the
reported gap is against the mean logit of the references actually drawn.

Draws match Captum's by construction: indices then alphas from numpy's legacy RandomState(seed)
(Captum calls np.random.choice, then np.random.uniform), noise from a torch CPU generator
seeded alike, in sample order (Captum: torch.normal on the global generator), so seeding both
global generators with `seed` makes Captum reproduce this map; chunking changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from saliency.attribution.completeness import completeness_stats
from saliency.attribution.executor import (
    ChunkOutput,
    DeepTask,
    SameTensor,
    SampleStream,
    tensor_bytes,
)
from saliency.attribution.limits import Limits
from saliency.attribution.methods.reference_sets import ReferenceSet
from saliency.attribution.registry import register
from saliency.attribution.requirements import INPUT_GRADIENT
from saliency.attribution.types import Attribution
from saliency.errors import require

REFERENCES = ("photos", "uniform", "black_white", "custom")
MAX_SEED = 2**32 - 1  # numpy's RandomState (and Captum's np.random.seed) take 32-bit seeds


@dataclass(frozen=True)
class GradientShapParams:
    n_samples: int = field(default=50, metadata={"min": 1, "max_limit": "max_gradient_shap_samples"})
    # input noise std as a fraction of the input's value range (0: Expected Gradients)
    stdev: float = field(default=0.0, metadata={"min": 0, "max": 1})
    reference: str = field(default="photos", metadata={"choices": REFERENCES})
    seed: int = field(default=0, metadata={"min": 0, "max": MAX_SEED})
    # reference="custom": normalised model inputs [N, C, H, W], N <= Limits.max_reference_images
    custom_reference: torch.Tensor | None = field(
        default=None, compare=False, repr=False, metadata={"stack_limit": "max_reference_images"}
    )

    def validate(self, limits: Limits) -> None:
        """Rules across fields; each field's own bounds are in its metadata."""
        ref = self.custom_reference
        if self.reference != "custom":
            require(ref is None, "gradient_shap.custom_reference", "set only with reference='custom'")
            return
        require(ref is not None, "gradient_shap.custom_reference", "reference='custom' needs a tensor [N, C, H, W]")
        require(
            ref.ndim == 4 and len(ref) >= 1,
            "gradient_shap.custom_reference",
            f"shape {list(ref.shape)} is not a stack [N, C, H, W] of at least one input",
        )
        require(
            len(ref) <= limits.max_reference_images,
            "gradient_shap.custom_reference",
            f"{len(ref)} references, at most {limits.max_reference_images} allowed",
        )
        require(bool(torch.isfinite(ref).all()), "gradient_shap.custom_reference", "contains NaN or Inf")


@dataclass(frozen=True)
class Draws:
    """The random choices of one request: reference index [n], alpha [n] (float32)."""

    indices: np.ndarray
    alphas: torch.Tensor


def draw(n_samples: int, n_references: int, seed: int) -> Draws:
    """Indices, then alphas, from RandomState(seed): Captum's order on numpy's global RNG."""
    rng = np.random.RandomState(seed)
    indices = rng.choice(n_references, n_samples)
    alphas = torch.tensor(rng.uniform(0.0, 1.0, n_samples), dtype=torch.float32)
    return Draws(indices, alphas)


def reference_set(model, x: torch.Tensor, params: GradientShapParams) -> ReferenceSet:
    """The references for explaining x [C, H, W] (built-in sets are loaded on first use)."""
    if params.reference == "custom":
        ref = params.custom_reference
        require(
            tuple(ref.shape[1:]) == tuple(x.shape),
            "gradient_shap.custom_reference",
            f"shape {list(ref.shape)} is not [N, *input {list(x.shape)}]",
        )
    return ReferenceSet(params.reference, model.spec, tuple(x.shape), params.custom_reference)


@register(
    "gradient_shap",
    "deep",
    GradientShapParams,
    "GradientSHAP / Expected Gradients (Lundberg & Lee 2017; Erion et al. 2021)",
    signed=True,
    supports=INPUT_GRADIENT,
    enum="METHOD_GRADIENT_SHAP",
    oneof="gradient_shap",
    fallback="input_x_gradient",  # one sample, alpha = 1, a zero reference
    example={"n_samples": 9, "stdev": 0.1, "reference": "uniform", "seed": 4},
)
def plan_gradient_shap(model, x: torch.Tensor, target: int, params: GradientShapParams) -> DeepTask:
    """x [C, H, W] normalised input -> a DeepTask whose map is sum_c attr [H, W]."""
    image = SameTensor(x)  # the caller's tensor: plans of one request share it, wherever it is
    x = x.detach().float().cpu()
    references = reference_set(model, x, params)
    draws = draw(params.n_samples, references.count, params.seed)
    noise_stdev = params.stdev * float(x.max() - x.min())
    generator = torch.Generator().manual_seed(params.seed)
    total = torch.zeros_like(x)
    deltas: dict[int, torch.Tensor] = {}  # start -> (x~ - b) of a generated, unconsumed slice
    # Completeness: F(x) and F of each distinct reference drawn, weighted by its draw count.
    drawn, counts = np.unique(draws.indices, return_counts=True)
    scores = torch.zeros(1 + len(drawn))
    expected = [0]

    def interpolated(start: int, stop: int) -> torch.Tensor:
        assert start == expected[0], "samples must be drawn in order"  # the noise stream's order
        expected[0] = stop
        noisy = x.expand(stop - start, *x.shape)
        if noise_stdev > 0:
            noisy = noisy + noise_stdev * torch.randn((stop - start, *x.shape), generator=generator)
        baselines = references.get(draws.indices[start:stop])
        alpha = draws.alphas[start:stop, None, None, None]
        deltas[start] = noisy - baselines
        return alpha * noisy + (1 - alpha) * baselines  # Captum's expression, for equal rounding

    def accumulate(start: int, out: ChunkOutput) -> None:
        total.add_((deltas.pop(start).to(out.grads.device) * out.grads).sum(0).cpu())  # reduced on the device

    def endpoints(start: int, stop: int) -> torch.Tensor:
        rows = [x[None]] if start == 0 else []
        first, last = max(start, 1) - 1, stop - 1
        if last > first:
            rows.append(references.get(drawn[first:last]))
        return torch.cat(rows)

    def record(start: int, out: ChunkOutput) -> None:
        scores[start : start + len(out.logits)] = out.logits[:, target].cpu()

    def finish() -> Attribution:
        attr = total / params.n_samples
        f_input = float(scores[0])
        f_reference = float((scores[1:].double() * torch.from_numpy(counts)).sum() / params.n_samples)
        gap = f_input - f_reference
        return Attribution(
            "gradient_shap",
            target,
            attr.sum(0),
            attr,
            {
                **completeness_stats(float(attr.sum()), gap),
                "score_input": f_input,
                "score_reference_mean": f_reference,
                "n_samples": float(params.n_samples),
                "references": float(references.count),
                "noise_stdev": noise_stdev,
            },
        )

    return DeepTask(
        "gradient_shap",
        target,
        [
            SampleStream(params.n_samples, True, interpolated, accumulate, sample_shape=tuple(x.shape)),
            # F(x) and the references drawn do not depend on the target: shared across targets.
            SampleStream(
                1 + len(drawn), False, endpoints, record, sample_shape=tuple(x.shape),
                share_key=(
                    "gradient_shap.endpoints", image, params.reference, params.n_samples, params.seed,
                    None if params.custom_reference is None else SameTensor(params.custom_reference),
                ),
            ),
        ],
        finish,
        # A custom reference stack is the request's, held for its tasks' lifetime; built-in
        # sets live in their cache, under its own budget.
        held_bytes=tensor_bytes(total, scores, draws.alphas, references.custom)
        + draws.indices.nbytes + drawn.nbytes + counts.nbytes + x.nbytes,  # + attr in finish
    )
