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

`map_error` is the standard error of the mean map (a running sum of squares per pixel of each
sample's channel-summed attribution). With `max_map_error` > 0, n_samples is the cap: the draws
are the cap's (Captum's order draws every index before the first alpha, so the first N draws
of n = cap are not those of n = N) and the stream stops at the first checkpoint where the
estimate is under the target; the map is then the mean of the cap run's first N samples, and
the completeness gap is against the references those N drew (their forwards wait until N is
known, so none is computed for nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from saliency.attribution.completeness import completeness_stats
from saliency.attribution.executor import (
    ChunkOutput,
    DeepPlan,
    SameTensor,
    SampleStream,
    tensor_bytes,
)
from saliency.attribution.limits import Limits
from saliency.attribution.map_error import (
    Checkpoints,
    max_map_error_field,
    mean_error,
    require_pilot,
)
from saliency.attribution.methods.reference_sets import ReferenceSet
from saliency.attribution.registry import register
from saliency.attribution.requirements import INPUT_GRADIENT
from saliency.attribution.types import Attribution
from saliency.errors import require

REFERENCES = ("photos", "uniform", "black_white", "custom")
MAX_SEED = 2**32 - 1  # numpy's RandomState (and Captum's np.random.seed) take 32-bit seeds
PILOT_SAMPLES = 16  # the first stage of error-targeted GradientSHAP


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
    # estimated relative L2 error of the map to stop at; 0: exactly n_samples
    max_map_error: float = max_map_error_field()

    def validate(self, limits: Limits) -> None:
        """Rules across fields; each field's own bounds are in its metadata."""
        require_pilot("gradient_shap", "n_samples", self.n_samples, self.max_map_error, PILOT_SAMPLES)
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
def plan_gradient_shap(model, x: torch.Tensor, target: int, params: GradientShapParams) -> DeepPlan:
    """x [C, H, W] normalised input -> a DeepPlan whose map is sum_c attr [H, W]."""
    image = SameTensor(x)  # the caller's tensor: plans of one request share it, wherever it is
    x = x.detach().float().cpu()
    references = reference_set(model, x, params)
    draws = draw(params.n_samples, references.count, params.seed)
    noise_stdev = params.stdev * float(x.max() - x.min())
    generator = torch.Generator().manual_seed(params.seed)
    targeted = params.max_map_error > 0
    stages = Checkpoints(params.n_samples, params.max_map_error, PILOT_SAMPLES)
    total = torch.zeros_like(x)
    total_sq = torch.zeros(x.shape[1:], dtype=torch.float64)  # of each sample's channel sum, for map_error
    deltas: dict[int, torch.Tensor] = {}  # start -> (x~ - b) of a generated, unconsumed slice
    # Completeness: F(x) and F of each distinct reference drawn, weighted by its draw count
    # (with a target, of the first `used` draws, once the path stream has stopped).
    drawn, counts = np.unique(draws.indices, return_counts=True)
    refs = {"drawn": drawn, "counts": counts}
    scores = torch.zeros(1 + len(drawn))
    expected = [0]
    used = [params.n_samples]
    errors: list[float] = []

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
        terms = deltas.pop(start).to(out.grads.device) * out.grads  # reduced on the device
        total.add_(terms.sum(0).cpu())
        total_sq.add_(terms.sum(1).square().sum(0).cpu())
        stop = start + len(terms)
        if targeted and stop in stages:
            errors.append(mean_error(total.sum(0), total_sq, stop))
            if errors[-1] <= params.max_map_error or stop == params.n_samples:
                used[0] = path.n_samples = stop  # no further sample
                refs["drawn"], refs["counts"] = np.unique(draws.indices[:stop], return_counts=True)
                ends.n_samples = 1 + len(refs["drawn"])
                ends.share_key = (*ends.share_key, stop)  # the references of the first `stop` draws

    def endpoints(start: int, stop: int) -> torch.Tensor:
        rows = [x[None]] if start == 0 else []
        first, last = max(start, 1) - 1, stop - 1
        if last > first:
            rows.append(references.get(refs["drawn"][first:last]))
        return torch.cat(rows)

    def record(start: int, out: ChunkOutput) -> None:
        scores[start : start + len(out.logits)] = out.logits[:, target].cpu()

    def finish() -> Attribution:
        n = used[0]
        attr = total / n
        f_input = float(scores[0])
        weights = torch.from_numpy(refs["counts"])
        f_reference = float((scores[1 : 1 + len(weights)].double() * weights).sum() / n)
        gap = f_input - f_reference
        stats = {
            **completeness_stats(float(attr.sum()), gap),
            "score_input": f_input,
            "score_reference_mean": f_reference,
            "n_samples": float(n),
            "references": float(references.count),
            "noise_stdev": noise_stdev,
            "map_error": errors[-1] if errors else mean_error(total.sum(0), total_sq, n),
        }
        if targeted:
            stats.update(n_samples_cap=float(params.n_samples), max_map_error=params.max_map_error)
        return Attribution("gradient_shap", target, attr.sum(0), attr, stats)

    path = SampleStream(
        params.n_samples, True, interpolated, accumulate, sample_shape=tuple(x.shape),
        checkpoint=stages.next if targeted else None,
    )
    # F(x) and the references drawn do not depend on the target: shared across targets. With a
    # target they wait for the path stream, whose stop says which references were drawn.
    ends = SampleStream(
        1 + len(drawn), False, endpoints, record, sample_shape=tuple(x.shape), after=path if targeted else None,
        share_key=(
            "gradient_shap.endpoints", image, params.reference, params.n_samples, params.seed,
            None if params.custom_reference is None else SameTensor(params.custom_reference),
        ),
    )
    return DeepPlan(
        "gradient_shap",
        target,
        [path, ends],
        finish,
        # A custom reference stack is the request's, held for its tasks' lifetime; built-in
        # sets live in their cache, under its own budget.
        held_bytes=tensor_bytes(total, total_sq, scores, draws.alphas, references.custom)
        + draws.indices.nbytes + drawn.nbytes + counts.nbytes + x.nbytes,  # + attr in finish
    )
