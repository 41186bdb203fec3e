"""LIME (Ribeiro et al. 2016) over SLIC superpixels, forward-only.

Coalitions z in {0, 1}^M are drawn Bernoulli(1/2) per segment, as Captum's `Lime` default (from a
generator seeded with `seed`, in Captum's order: the same seed gives Captum's coalitions). Each
masked image's target logit is fitted by a weighted ridge regression y ~ b + z . c, weighted by
the similarity exp(-d^2 / kernel_width^2), d the cosine distance between z and the all-kept
coalition, 1 - sqrt(|z| / M) (1 for the empty coalition). The map gives each pixel its segment's
coefficient c; raw is c [M]; stats carry the intercept and the surrogate's weighted R^2 (how far
to trust the linear explanation).

Decisions: the distance is taken between the binary vectors, as the lime package's image
explainer; Captum's default kernel measures it between the images, which makes the weights
depend on the baseline's colours. kernel_width defaults to 0.25 (lime's image default; lime's
kernel is the square root of ours, i.e. ours at width w equals lime's at w / sqrt(2)). The
surrogate is ridge with an unpenalised intercept and alpha = 1, as lime's default (Captum's
default is Lasso, which needs an iterative solver); alpha = 0 is weighted least squares
(minimum norm). Solved in torch, float64: sklearn's `Ridge` / `LinearRegression` give the
same numbers (tests).

`map_error` is a delete-a-group jackknife of the fit (attribution/map_error.py: the surrogate
refitted without each group of coalitions, coalition i in group i % GROUPS), the maps' norms
weighted by segment area. With `max_map_error` > 0, n_samples is the cap: coalitions are drawn
in order (the first N of the cap are those of n = N), and the stream stops at the first
checkpoint where the estimate is under the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from saliency.attribution.executor import ChunkOutput, DeepPlan, SameTensor, SampleStream
from saliency.attribution.limits import Limits
from saliency.attribution.map_error import (
    Checkpoints,
    jackknife_rows,
    max_map_error_field,
    require_pilot,
)
from saliency.attribution.methods.kernel_shap import coalition_task_bytes
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
class LimeParams(SegmentationParams):
    method: ClassVar[str] = "lime"
    # model calls: sampled coalitions
    n_samples: int = field(default=256, metadata={"min": 1, "max_limit": "max_lime_samples"})
    # width of the exponential similarity kernel on the cosine distance (in [0, 1])
    kernel_width: float = field(
        default=0.25, metadata={"min": 0.05, "max": 100, "note": "below 0.05 the weights of distant samples underflow"}
    )
    # ridge penalty on the coefficients (0: weighted least squares)
    alpha: float = field(default=1.0, metadata={"min": 0, "max": 1e6})
    # estimated relative L2 error of the map to stop at; 0: exactly n_samples
    max_map_error: float = max_map_error_field()

    def validate(self, limits: Limits) -> None:
        """Rules across fields; each field's own bounds are in its metadata."""
        require_pilot("lime", "n_samples", self.n_samples, self.max_map_error, PILOT_SAMPLES)


# The first stage of error-targeted LIME and KernelSHAP: enough coalitions for a fit over
# SLIC's default 50 segments.
PILOT_SAMPLES = 64


def bernoulli_coalitions(m: int, n: int, seed: int) -> torch.Tensor:
    """[n, M] bool, each segment kept with probability 1/2 (Captum's draws for the same seed)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, m), 0.5), generator=generator).bool()


def similarity(coalitions: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """[n, M] bool -> [n] float64 exp(-d^2 / width^2), d = cosine distance to the all-ones z."""
    kept = coalitions.double().sum(1)
    distance = 1 - (kept / coalitions.shape[1]).sqrt()  # 1 for the empty coalition
    return torch.exp(-(distance**2) / kernel_width**2)


def weighted_ridge(
    features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, float]:
    """min_c,b sum_i w_i (y_i - b - x_i . c)^2 + alpha |c|^2 -> (c [M] float64, b).

    features [n, M], targets [n], weights [n] >= 0. The intercept is unpenalised (centring by
    the weighted means, as sklearn does); alpha = 0 gives the minimum-norm least-squares c.
    """
    x, y, w = features.double(), targets.double(), weights.double()
    w_sum = w.sum()
    x_mean, y_mean = (w @ x) / w_sum, (w @ y) / w_sum
    root_w = w.sqrt()[:, None]
    xc, yc = root_w * (x - x_mean), root_w[:, 0] * (y - y_mean)
    if alpha > 0:
        gram = xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=torch.float64)
        coef = torch.linalg.solve(gram, xc.T @ yc)
    else:
        coef = torch.linalg.lstsq(xc, yc[:, None], driver="gelsd").solution[:, 0]
    return coef, float(y_mean - x_mean @ coef)


def weighted_r2(
    features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, coef: torch.Tensor, intercept: float
) -> float:
    """The surrogate's weighted coefficient of determination (1 when the fit is exact)."""
    y, w = targets.double(), weights.double()
    predicted = features.double() @ coef + intercept
    y_mean = (w @ y) / w.sum()
    total = float(w @ (y - y_mean) ** 2)
    return 1.0 - float(w @ (y - predicted) ** 2) / total if total > 0 else 1.0


@register(
    "lime",
    "deep",
    LimeParams,
    "LIME over SLIC superpixels: a locally weighted linear surrogate of the target logit (Ribeiro et al. 2016)",
    signed=True,
    enum="METHOD_LIME",
    oneof="lime",
    fallback="gradcam",
    samples=lambda p: p.n_samples,
    example={"n_samples": 20, "n_segments": 9, "compactness": 100.0, "baseline": "blur", "blur_sigma": 2.0},
)
def plan_lime(
    model: LoadedModel, x: torch.Tensor, target: int, params: LimeParams, segments: SegmentCache = SEGMENTS
) -> DeepPlan:
    """x [C, H, W] normalised input -> a DeepPlan whose map [H, W] is each pixel's segment's
    coefficient. SLIC and the coalitions are made with the first samples, on the worker."""
    image = SameTensor(x)  # the caller's tensor: plans of one request share it, wherever it is
    x = x.detach().float().cpu()
    lazy = LazySegmentation(model.spec, x, params, segments)
    scores = torch.zeros(params.n_samples)
    state: dict[str, torch.Tensor] = {}
    stages = Checkpoints(params.n_samples, params.max_map_error, PILOT_SAMPLES)
    used = [params.n_samples]
    errors: list[float] = []

    def coalitions() -> torch.Tensor:
        if "coalitions" not in state:
            state["coalitions"] = bernoulli_coalitions(lazy.n_segments, params.n_samples, params.seed)
        return state["coalitions"]

    def inputs(start: int, stop: int) -> torch.Tensor:
        return lazy.images(coalitions()[start:stop])

    def fit(n: int) -> tuple[torch.Tensor, float, float]:
        """(coef, intercept, map_error) of the surrogate on the first n coalitions."""
        z, y = coalitions()[:n], scores[:n]
        weights = similarity(z, params.kernel_width)
        coef, intercept = weighted_ridge(z, y, weights, params.alpha)
        areas = torch.bincount(lazy.labels.flatten().long(), minlength=lazy.n_segments)
        error = jackknife_rows(
            coef, lambda keep: weighted_ridge(z[keep], y[keep], weights[keep], params.alpha)[0], n, areas
        )
        return coef, intercept, error

    def record(start: int, out: ChunkOutput) -> None:
        scores[start : start + len(out.logits)] = out.logits[:, target].float().cpu()
        stop = start + len(out.logits)
        if params.max_map_error > 0 and stop in stages:
            errors.append(fit(stop)[2])
            if errors[-1] <= params.max_map_error or stop == params.n_samples:
                used[0] = stream.n_samples = stop  # no further coalition

    def finish() -> Attribution:
        n = used[0]
        z = coalitions()[:n]
        coef, intercept, error = fit(n)
        weights = similarity(z, params.kernel_width)
        stats = {
            "segments": float(lazy.n_segments),
            "samples": float(n),
            "n_samples": float(n),
            "intercept": intercept,
            "surrogate_r2": weighted_r2(z, scores[:n], weights, coef, intercept),
            "map_error": error,
        }
        if params.max_map_error > 0:
            stats.update(n_samples_cap=float(params.n_samples), max_map_error=params.max_map_error)
        return Attribution("lime", target, segment_map(coef, lazy.labels), coef.float(), stats)

    # The coalitions depend on the segments, n_samples and the seed (not on the target, the
    # kernel or the penalty): other tasks with them share every masked forward (cut at the
    # same checkpoints).
    share = ("lime", image, params.segmentation_key, params.n_samples, params.seed, stages.points)
    stream = SampleStream(
        params.n_samples, False, inputs, record, sample_shape=tuple(x.shape), share_key=share,
        checkpoint=stages.next if params.max_map_error > 0 else None,
    )
    # + the jackknife's refits in finish: one at a time, each as large as the fit
    return DeepPlan("lime", target, [stream], finish, held_bytes=coalition_task_bytes(x, params.n_samples, params.n_segments))
