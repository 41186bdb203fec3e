"""The `evaluate` request option: which quality metrics apply to a response, and its scores.

Metrics (names as in `QualityScore.metric` and the Prometheus label `metric`):
- deletion_auc / insertion_auc (Petsiuk et al. 2018): `curves`; lower / higher is better.
- pointing_game (Zhang et al. 2016): 1 when the map's maximum lies in the ground-truth region
  (dilated by `pointing_tolerance` pixels), else 0. Needs a box or mask.
- agreement_spearman / agreement_top_iou: every pair of methods on the same target.
- contrast_spearman / contrast_top_iou: each method's map for the predicted class against its
  map for the runner-up; low means the method tells the two classes apart.
- completeness_error: IG's |sum(attr) - (F(x) - F(x'))| / |F(x) - F(x')|, from its stats.
- map_error: a sampled map's estimated relative L2 error against its converged map, from its
  stats (RISE, SmoothGrad, GradientSHAP, KernelSHAP, LIME always; IG with max_map_error).
Requested groups (`EvaluateOptions.metrics`) are the names without suffix; empty = every
group that applies to the request. Everything except the curves is numpy on the maps alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import torch

from saliency.attribution.executor import ChunkExecutor, DeepPlan
from saliency.attribution.registry import all_methods
from saliency.attribution.types import Attribution, Prediction, Targets
from saliency.errors import require
from saliency.quality.curves import plan_perturbation_curves
from saliency.quality.similarity import spearman, top_k_iou
from saliency.wire.types import (
    InputRegion,
    QualityScore,  # the API's type: ExplainResponse.quality
)

METRIC_GROUPS = ("deletion", "insertion", "pointing_game", "agreement", "contrast", "completeness", "map_error")
MAX_PERTURBATION_STEPS = 256
MAX_POINTING_TOLERANCE = 64


@dataclass(frozen=True)
class EvaluateOptions:
    """What to measure. region: the ground truth as a bool mask [H, W] at the model input's
    resolution (None: no pointing game)."""

    metrics: tuple[str, ...] = ()  # groups of METRIC_GROUPS; empty = all that apply
    perturbation_steps: int = 16
    top_fraction: float = 0.1
    region: torch.Tensor | None = field(default=None, compare=False, repr=False)
    pointing_tolerance: int = 0

    def validate(self) -> None:
        for i, name in enumerate(self.metrics):
            require(name in METRIC_GROUPS, f"evaluate.metrics[{i}]", f"{name!r} is not one of {METRIC_GROUPS}")
        require(len(set(self.metrics)) == len(self.metrics), "evaluate.metrics", "a metric is listed twice")
        require(
            2 <= self.perturbation_steps <= MAX_PERTURBATION_STEPS,
            "evaluate.perturbation_steps",
            f"{self.perturbation_steps} is outside [2, {MAX_PERTURBATION_STEPS}]",
        )
        require(
            0.0 < self.top_fraction <= 1.0, "evaluate.top_fraction", f"{self.top_fraction} is outside (0, 1]"
        )
        require(
            0 <= self.pointing_tolerance <= MAX_POINTING_TOLERANCE,
            "evaluate.pointing_tolerance",
            f"{self.pointing_tolerance} is outside [0, {MAX_POINTING_TOLERANCE}]",
        )
        if self.region is not None:
            require(self.region.ndim == 2, "evaluate.ground_truth", "the region must be [H, W]")
            require(bool(self.region.any()), "evaluate.ground_truth", "the region covers no model-input pixel")

    def groups(self, methods: Sequence[str], targets: Targets) -> tuple[str, ...]:
        """The metric groups to compute for a request with `methods` and `targets`.

        Listed explicitly, a group that cannot apply is an error naming what is missing;
        left to the default (empty), such groups are skipped.
        """
        applicable = {
            "deletion": (True, ""),
            "insertion": (True, ""),
            "pointing_game": (self.region is not None, "needs evaluate.ground_truth (a box or a mask)"),
            "agreement": (len(methods) >= 2, "needs at least two methods in the request"),
            "contrast": (
                not targets.classes and targets.top_k >= 2,
                "needs targets.top_k >= 2, so the runner-up class has maps too",
            ),
            "completeness": ("ig" in methods, "needs METHOD_INTEGRATED_GRADIENTS in the request"),
            "map_error": (
                any(_estimates_map_error(m) for m in methods),
                "needs a sampled method in the request (one with max_map_error: rise, smoothgrad, "
                "gradient_shap, kernel_shap, lime, ig)",
            ),
        }
        if not self.metrics:
            return tuple(g for g in METRIC_GROUPS if applicable[g][0])
        for i, name in enumerate(self.metrics):
            ok, why = applicable[name]
            require(ok, f"evaluate.metrics[{i}]", f"{name} {why}")
        return self.metrics


def _estimates_map_error(method: str) -> bool:
    """Whether the method's maps can carry a map_error (its params have max_map_error)."""
    info = all_methods().get(method)
    return info is not None and any(f.name == "max_map_error" for f in dataclasses.fields(info.params_type))


def pointing_game(saliency_map: torch.Tensor, region: torch.Tensor, tolerance: int = 0) -> bool:
    """Whether the map's maximum (first in raster order) is within `tolerance` pixels
    (Chebyshev distance) of the region. saliency_map, region: [H, W]."""
    m = torch.nan_to_num(saliency_map.detach().float().cpu(), nan=float("-inf"))
    if tuple(m.shape) != tuple(region.shape):
        raise ValueError(f"map {list(m.shape)} and region {list(region.shape)} differ in shape")
    row, col = divmod(int(torch.argmax(m)), m.shape[1])
    r = region.bool().cpu()
    window = r[max(row - tolerance, 0) : row + tolerance + 1, max(col - tolerance, 0) : col + tolerance + 1]
    return bool(window.any())


def map_scores(
    attributions: Sequence[Attribution],
    predictions: Sequence[Prediction],
    groups: Iterable[str],
    options: EvaluateOptions,
) -> list[QualityScore]:
    """Every metric of `groups` that needs no model call, from the delivered maps."""
    groups = set(groups)
    scores: list[QualityScore] = []
    if "completeness" in groups:
        for a in attributions:
            if "completeness_error" in a.stats:
                scores.append(QualityScore("completeness_error", a.method, a.target, a.stats["completeness_error"]))
    if "map_error" in groups:
        for a in attributions:
            if "map_error" in a.stats:
                scores.append(QualityScore("map_error", a.method, a.target, a.stats["map_error"]))
    if "pointing_game" in groups and options.region is not None:
        for a in attributions:
            hit = pointing_game(a.map, options.region, options.pointing_tolerance)
            scores.append(QualityScore("pointing_game", a.method, a.target, float(hit)))
    by_target: dict[int, list[Attribution]] = {}
    for a in attributions:
        by_target.setdefault(a.target, []).append(a)
    if "agreement" in groups:
        for maps in by_target.values():
            for first, second in combinations(maps, 2):
                scores.extend(_pair("agreement", first, second, options.top_fraction, other_method=second.method))
    if "contrast" in groups and len(predictions) >= 2:
        top, runner_up = predictions[0].class_index, predictions[1].class_index
        others = {a.method: a for a in by_target.get(runner_up, [])}
        for a in by_target.get(top, []):
            if a.method in others:
                scores.extend(_pair("contrast", a, others[a.method], options.top_fraction, other_target=runner_up))
    return scores


def _pair(kind: str, a: Attribution, b: Attribution, fraction: float, **other) -> list[QualityScore]:
    x, y = a.map.detach().float().cpu(), b.map.detach().float().cpu()
    return [
        QualityScore(f"{kind}_spearman", a.method, a.target, spearman(x, y), **other),
        QualityScore(f"{kind}_top_iou", a.method, a.target, top_k_iou(x, y, fraction), **other),
    ]


def plan_curve_tasks(x: torch.Tensor, attributions: Sequence[Attribution], groups: Iterable[str], steps: int) -> list[DeepPlan]:
    """One deletion+insertion plan per map when either curve is asked for (else none)."""
    groups = set(groups)
    if not groups & {"deletion", "insertion"}:
        return []
    return [plan_perturbation_curves(x, a.map, a.target, a.method, steps) for a in attributions]


def curve_scores(results: Sequence[Attribution], groups: Iterable[str]) -> list[QualityScore]:
    """The AUCs of finished curve tasks, for the groups asked for."""
    groups = set(groups)
    scores = []
    for r in results:
        for group in ("deletion", "insertion"):
            if group in groups:
                scores.append(QualityScore(f"{group}_auc", r.method, r.target, r.stats[f"{group}_auc"]))
    return scores


def evaluate_in_process(
    executor: ChunkExecutor,
    x: torch.Tensor,
    predictions: Sequence[Prediction],
    attributions: Sequence[Attribution],
    groups: Iterable[str],
    options: EvaluateOptions,
    progress: Callable[[int, int], None] | None = None,
) -> list[QualityScore]:
    """Every score of `groups` for one explained image, running the curves on `executor`."""
    groups = tuple(groups)
    curves = executor.run(plan_curve_tasks(x, attributions, groups, options.perturbation_steps), progress)
    return map_scores(attributions, predictions, groups, options) + curve_scores(curves, groups)


def region_from_box(
    box: tuple[float, float, float, float],
    image_size: tuple[int, int],
    input_size: tuple[int, int],
    seen: InputRegion | None = None,
) -> torch.Tensor:
    """(x_min, y_min, x_max, y_max) in pixels of the image sent [H0, W0] -> bool [H, W] at
    the model input's resolution: the model pixels whose centres fall inside the box.

    seen: the part of the image the model input covers (a centre crop, models/preprocess.py);
    default the whole image."""
    (h, w) = input_size
    seen = seen or InputRegion.whole(image_size)
    x_min, y_min, x_max, y_max = box
    ys = seen.y_min + (np.arange(h) + 0.5) * (seen.y_max - seen.y_min) / h
    xs = seen.x_min + (np.arange(w) + 0.5) * (seen.x_max - seen.x_min) / w
    inside_y = (ys >= y_min) & (ys < y_max)
    inside_x = (xs >= x_min) & (xs < x_max)
    return torch.from_numpy(np.outer(inside_y, inside_x))


def region_from_mask(mask: torch.Tensor, input_size: tuple[int, int], seen: InputRegion | None = None) -> torch.Tensor:
    """Mask [H0, W0] (non-zero = inside) -> bool [H, W] at the model input (nearest), reading
    only the part of the image the input covers (`seen`, default all of it)."""
    if seen is not None:
        top, bottom, left, right = seen.pixel_box(tuple(mask.shape), tuple(mask.shape))
        mask = mask[top:bottom, left:right]
    resized = torch.nn.functional.interpolate(
        (mask != 0).float()[None, None], size=input_size, mode="nearest"
    )[0, 0]
    return resized > 0.5
