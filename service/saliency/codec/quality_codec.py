"""The faithfulness messages on the wire: evaluate options, ground-truth regions, the
latency / completeness policy and its decisions, quality scores, and SanityCheck requests and
responses <-> the domain types of `saliency.quality`.

Server side, every value a user controls is checked here (or by the options' own `validate`)
and errors name the request path to fix, e.g. `evaluate.ground_truth.box`. The client side
(requests from plain values, results back) is `saliency.wire.requests` / `.results`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from saliency.attribution.limits import Limits
from saliency.attribution.registry import check_supported, get_method
from saliency.codec.method_params import (
    enum_label,
    float32_decimal,
    method_enum,
    methods_from_proto,
)
from saliency.codec.tensors import input_from_request, tensor_from_proto
from saliency.errors import InvalidArgument, require
from saliency.imaging import ImageLimits
from saliency.models import ModelSpec
from saliency.v1 import explainer_pb2 as pb
from saliency.wire.tables import QUALITY_METRICS, RANDOMIZATION_VALUES, RANDOMIZATIONS
from saliency.wire.types import InputRegion

# ------------------------------------------------------------------------------ enum tables

MAX_LAYER_NAME = 200


def _known_enum(value: int, table: Mapping[int, str], enum_type: Any, field: str) -> str:
    """An enum value -> its domain name, or InvalidArgument naming `field` (UNSPECIFIED too)."""
    if value not in table:
        known = ", ".join(enum_label(enum_type, v) for v in table)
        raise InvalidArgument(f"{enum_label(enum_type, value)} is not one of {known}", field)
    return table[value]


def _finite(value: float, field: str) -> float:
    require(math.isfinite(value), field, f"{value} is not a finite number")
    return value


# ----------------------------------------------- evaluate: options and ground-truth regions


def region_from_proto(
    ground_truth: pb.GroundTruth,
    image_size: tuple[int, int],
    input_size: tuple[int, int],
    seen: InputRegion | None = None,
) -> torch.Tensor:
    """`GroundTruth` in pixels of the image sent [H0, W0] -> bool region [H, W] at the model
    input, which covers `seen` of the image (a centre crop; default all of it). Field names in
    errors: evaluate.ground_truth.box.* / .mask.*"""
    from saliency.quality.evaluate import region_from_box, region_from_mask

    where = "evaluate.ground_truth"
    which = ground_truth.WhichOneof("region")
    h0, w0 = image_size
    if which == "box":
        b = ground_truth.box
        values = [_finite(getattr(b, k), f"{where}.box.{k}") for k in ("x_min", "y_min", "x_max", "y_max")]
        x_min, y_min, x_max, y_max = values
        require(0 <= x_min < x_max <= w0, f"{where}.box", f"x range [{x_min}, {x_max}) is not inside [0, {w0}] or is empty")
        require(0 <= y_min < y_max <= h0, f"{where}.box", f"y range [{y_min}, {y_max}) is not inside [0, {h0}] or is empty")
        region = region_from_box((x_min, y_min, x_max, y_max), image_size, input_size, seen)
    elif which == "mask":
        require(
            list(ground_truth.mask.shape) == [h0, w0],
            f"{where}.mask.shape",
            f"{list(ground_truth.mask.shape)} != the image sent [{h0}, {w0}]",
        )
        mask = tensor_from_proto(ground_truth.mask, f"{where}.mask", h0 * w0)
        require(bool(torch.isfinite(mask).all()), f"{where}.mask", "contains NaN or Inf")
        require(bool((mask != 0).any()), f"{where}.mask", "is all zero: nothing to point at")
        region = region_from_mask(mask, input_size, seen)
    else:
        raise InvalidArgument("set `box` or `mask`", where)
    require(bool(region.any()), where, "the region is smaller than one model-input pixel, or outside the part of "
            "the image the model sees")
    return region


def evaluate_from_proto(
    message: pb.EvaluateOptions,
    image_size: tuple[int, int],
    input_size: tuple[int, int],
    seen: InputRegion | None = None,
) -> Any:
    """`EvaluateOptions` -> validated quality.evaluate.EvaluateOptions (groups not yet checked
    against the request's methods and targets: `EvaluateOptions.groups` does that). seen: the
    part of the image the model input covers (MapFrame.region), for the ground truth."""
    from saliency.quality.evaluate import EvaluateOptions

    metrics = tuple(
        _known_enum(v, QUALITY_METRICS, pb.QualityMetric.DESCRIPTOR, f"evaluate.metrics[{i}]")
        for i, v in enumerate(message.metrics)
    )
    defaults = EvaluateOptions()
    values: dict[str, Any] = {"metrics": metrics}
    if message.HasField("perturbation_steps"):
        values["perturbation_steps"] = message.perturbation_steps
    if message.HasField("top_fraction"):
        values["top_fraction"] = float32_decimal(_finite(message.top_fraction, "evaluate.top_fraction"))
    if message.HasField("pointing_tolerance"):
        values["pointing_tolerance"] = message.pointing_tolerance
    if message.HasField("ground_truth"):
        values["region"] = region_from_proto(message.ground_truth, image_size, input_size, seen)
    options = dataclasses.replace(defaults, **values)
    options.validate()
    return options


# ---------------------------------------------- policy: latency budget, completeness target


def policy_from_request(request: pb.ExplainRequest) -> Any:
    """latency_budget_ms / completeness_target / explain_if -> validated PolicyOptions, or
    None when none is set."""
    from saliency.runtime.policy import ExplainCondition, PolicyOptions

    budget = request.latency_budget_ms if request.HasField("latency_budget_ms") else None
    target = request.completeness_target if request.HasField("completeness_target") else None
    condition = None
    if request.HasField("explain_if"):
        c = request.explain_if
        condition = ExplainCondition(
            float32_decimal(_finite(c.margin_below, "explain_if.margin_below")) if c.HasField("margin_below") else None,
            float32_decimal(_finite(c.probability_below, "explain_if.probability_below"))
            if c.HasField("probability_below") else None,
        )
    if budget is None and target is None and condition is None:
        return None
    if budget is not None:
        _finite(budget, "latency_budget_ms")
    options = PolicyOptions(
        budget, None if target is None else float32_decimal(_finite(target, "completeness_target")), condition
    )
    options.validate()
    return options


# ------------------------------------------------ results: quality scores, policy decisions


def quality_score_to_proto(score: Any) -> pb.QualityScore:
    message = pb.QualityScore(
        metric=score.metric, method=method_enum(score.method), target=score.target, value=float(score.value)
    )
    if score.other_method:
        message.other_method = method_enum(score.other_method)
    if score.other_target >= 0:
        message.other_target = score.other_target
    return message


def policy_decision_to_proto(decision: Any) -> pb.PolicyDecision:
    message = pb.PolicyDecision(deep_maps=decision.deep_maps, reason=decision.reason, sample_ms=decision.sample_ms)
    if decision.budget_ms is not None:
        message.budget_ms = decision.budget_ms
    for c in decision.choices:
        choice = pb.MethodChoice(
            requested=method_enum(c.requested),
            chosen=method_enum(c.chosen) if c.chosen else pb.METHOD_UNSPECIFIED,
            reason=c.reason,
            n_steps=c.n_steps,
        )
        if c.completeness_error is not None:
            choice.completeness_error = c.completeness_error
        if c.target is not None:
            choice.target = c.target
        message.choices.append(choice)
    return message


# ---------------------------------------------------------------------------- sanity checks

DEFAULT_SANITY_METHODS = ("vanilla", "gradcam", "guided_backprop")


@dataclass(frozen=True)
class SanityRequest:
    """A validated SanityCheckRequest, apart from the layer names (the backend checks those
    against the model)."""

    x: torch.Tensor
    methods: dict[str, Any]
    layers: tuple[str, ...] | None
    modes: tuple[str, ...]
    target: int | None
    seed: int


def sanity_request_from_proto(
    request: pb.SanityCheckRequest, spec: ModelSpec, limits: Limits, max_methods: int, image_limits: ImageLimits
) -> SanityRequest:
    x, _ = input_from_request(request, spec, image_limits)  # the same `input` oneof as Explain
    methods = methods_from_proto(request.methods, limits, max_methods, tuple(x.shape))
    check_supported(list(methods), spec, [f"methods[{i}].method" for i in range(len(methods))])
    if not methods:  # the defaults that can explain this model
        methods = {
            name: get_method(name).params_type()
            for name in DEFAULT_SANITY_METHODS
            if get_method(name).unsupported_reason(spec) is None
        }
    layers = tuple(request.layers)
    for i, layer in enumerate(layers):
        require(
            0 < len(layer) <= MAX_LAYER_NAME and layer.isprintable() and " " not in layer,
            f"layers[{i}]",
            f"{layer!r} is not a module path such as `_blocks.7` (at most {MAX_LAYER_NAME} characters)",
        )
    modes = tuple(
        _known_enum(v, RANDOMIZATIONS, pb.Randomization.DESCRIPTOR, f"randomizations[{i}]")
        for i, v in enumerate(request.randomizations)
    )
    require(len(set(modes)) == len(modes), "randomizations", "a randomization is listed twice")
    target = None
    if request.HasField("target"):
        target = request.target
        require(0 <= target < spec.num_classes, "target", f"class {target} outside [0, {spec.num_classes})")
    seed = request.seed if request.HasField("seed") else 0
    require(seed >= 0, "seed", f"{seed} is negative")
    return SanityRequest(x, methods, layers or None, modes or ("cascading", "independent"), target, seed)


def sanity_response_to_proto(outcome: Any) -> pb.SanityCheckResponse:
    result = outcome.result
    response = pb.SanityCheckResponse(
        model=result.model, target=result.targets[0], layers=list(result.layers),
        weights_sha256=outcome.weights_sha256,
    )
    for r in result.results:
        s = r.similarity
        response.similarities.append(
            pb.LayerSimilarity(
                randomization=RANDOMIZATION_VALUES[r.mode], layer=r.layer, method=method_enum(r.method),
                spearman_abs=s.spearman_abs, spearman_signed=s.spearman_signed, ssim=s.ssim, hog=s.hog,
            )
        )
    return response
