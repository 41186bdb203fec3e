"""Protobuf <-> domain conversion for `saliency.v1`: the only code that knows both sides.

Server side (called by the servicer, which knows no torch): request messages become validated
domain values (the model input, `Targets`, method params, `OutputOptions`) and domain results
become response messages (attributions, predictions, `ModelInfo`). Client side: the inverse,
so `ExplainerClient` speaks in domain types too.

This module holds the Explain flow and composes the codecs of its parts, each a module of its
own: `tensors` (Tensor messages, the `input` oneof), `method_params` (`MethodRequest`s and the
method tables) and `quality_codec` (evaluate options, policy, quality scores, SanityCheck).

Every value a user controls is checked here, in those modules, or by the domain types' own
`validate`, and every error is an `InvalidArgument` (or `ResourceExhausted` for size limits)
whose field is the request path to fix, e.g. `methods[1].integrated_gradients.n_steps`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from saliency import render
from saliency.api.method_params import (
    METHOD_NAMES,
    method_enum,
    method_name,
    method_requests_to_proto,
    methods_from_proto,
    parameter_infos,
)
from saliency.api.quality_codec import (
    apply_policy_to_proto,
    evaluate_to_proto,
    policy_decision_from_proto,
    quality_score_from_proto,
)
from saliency.api.tensors import (
    DTYPE_VALUES,
    DTYPES,
    MAX_MAP_ELEMENTS,
    input_from_request,
    tensor_from_proto,
    tensor_to_proto,
)
from saliency.attribution.limits import Limits
from saliency.attribution.registry import check_supported, get_method
from saliency.attribution.types import Attribution, Prediction, Targets
from saliency.errors import InvalidArgument, require
from saliency.imaging import ImageLimits
from saliency.models import ModelSpec
from saliency.v1 import explainer_pb2 as pb

# bench/ (isolation.py, torchserve.py) still reaches `method_requests_to_proto` and
# `tensor_to_proto` as `convert.X`; both are imported above for this module's own use, so they
# stay importable from here. Other callers import them from `method_params` / `tensors`.

_NORMALIZATIONS: dict[int, str] = {
    pb.NORMALIZATION_UNSPECIFIED: "none",
    pb.NORMALIZATION_NONE: "none",
    pb.NORMALIZATION_MAX_ABS: "max_abs",
    pb.NORMALIZATION_MIN_MAX: "min_max",
}
_NORMALIZATION_VALUES = {
    "none": pb.NORMALIZATION_NONE,
    "max_abs": pb.NORMALIZATION_MAX_ABS,
    "min_max": pb.NORMALIZATION_MIN_MAX,
}


# ---------------------------------------------------------------------------------- targets


def request_inputs_from_proto(
    request: pb.ExplainRequest,
    spec: ModelSpec,
    image_limits: ImageLimits,
    limits: Limits,
    max_methods: int,
) -> tuple[torch.Tensor, np.ndarray, Targets, dict[str, Any]]:
    """An ExplainRequest's input, targets and methods, each validated: (x, rgb, targets, methods).

    The one decoder of a request's payload, for the servicer and the TorchServe handler alike.
    """
    targets, methods = request_head_from_proto(request, spec, limits, max_methods)
    x, rgb = input_from_request(request, spec, image_limits)
    return x, rgb, targets, methods


def request_head_from_proto(
    request: pb.ExplainRequest, spec: ModelSpec, limits: Limits, max_methods: int
) -> tuple[Targets, dict[str, Any]]:
    """What an ExplainRequest asks for, validated without decoding its input: (targets, methods).
    Inputs always reach the model at its input size, so that is the shape methods see."""
    targets = targets_from_proto(
        request.targets if request.HasField("targets") else None, spec.num_classes, limits.max_targets
    )
    methods = methods_from_proto(request.methods, limits, max_methods, (3, *spec.input_size))
    check_supported(list(methods), spec, [f"methods[{i}].method" for i in range(len(methods))])
    return targets, methods


def targets_from_proto(targets: pb.Targets | None, num_classes: int, max_targets: int) -> Targets:
    """`Targets` message (or None) -> validated domain Targets; unset means top_k = 1."""
    which = targets.WhichOneof("selection") if targets is not None else None
    if which == "top_k":
        result = Targets(top_k=targets.top_k)
    elif which == "classes":
        indices = tuple(targets.classes.indices)
        # An empty list would silently fall back to top_k=1 in the domain type.
        require(bool(indices), "targets.classes", "no class index given; set top_k instead")
        result = Targets(classes=indices)
    else:
        result = Targets()
    result.validate(num_classes, max_targets)
    return result


def targets_to_proto(targets: Targets) -> pb.Targets:
    if targets.classes:
        return pb.Targets(classes=pb.ClassList(indices=list(targets.classes)))
    return pb.Targets(top_k=targets.top_k)

# ---------------------------------------------------------------------------- output options

MAP_DTYPES = ("float32", "float16")
NORMALIZATIONS = ("none", "max_abs", "min_max")
MAX_TOP_PREDICTIONS = 100


@dataclass(frozen=True)
class OutputOptions:
    """How maps come back: dtype, normalisation of the values, a PNG overlay, predictions."""

    map_dtype: str = "float32"  # or "float16": half the bytes
    normalization: str = "none"  # none (raw), max_abs (divide by max |map|), min_max (to [0, 1])
    include_overlay: bool = False
    top_predictions: int = 5

    def validate(self) -> None:
        require(self.map_dtype in MAP_DTYPES, "output.map_dtype", f"{self.map_dtype!r} is not one of {MAP_DTYPES}")
        require(
            self.normalization in NORMALIZATIONS,
            "output.normalization",
            f"{self.normalization!r} is not one of {NORMALIZATIONS}",
        )
        require(
            1 <= self.top_predictions <= MAX_TOP_PREDICTIONS,
            "output.top_predictions",
            f"{self.top_predictions} is outside [1, {MAX_TOP_PREDICTIONS}]",
        )


def output_options_from_proto(options: pb.OutputOptions | None) -> OutputOptions:
    """`OutputOptions` message (or None) -> validated OutputOptions; unset fields default."""
    if options is None:
        return OutputOptions()
    if options.map_dtype not in DTYPES:
        raise InvalidArgument(f"unknown dtype {options.map_dtype}", "output.map_dtype")
    if options.normalization not in _NORMALIZATIONS:
        raise InvalidArgument(f"unknown normalization {options.normalization}", "output.normalization")
    result = OutputOptions(
        map_dtype=DTYPES[options.map_dtype][0],
        normalization=_NORMALIZATIONS[options.normalization],
        include_overlay=options.include_overlay,
        top_predictions=options.top_predictions if options.HasField("top_predictions") else 5,
    )
    result.validate()
    return result


def output_options_to_proto(options: OutputOptions) -> pb.OutputOptions:
    options.validate()
    return pb.OutputOptions(
        map_dtype=DTYPE_VALUES[options.map_dtype],
        normalization=_NORMALIZATION_VALUES[options.normalization],
        include_overlay=options.include_overlay,
        top_predictions=options.top_predictions,
    )


# ---------------------------------------------------------------------- results (server side)


def normalize_values(m: torch.Tensor, mode: str) -> torch.Tensor:
    """[H, W] map -> the same map normalised: none | max_abs (to [-1, 1]) | min_max ([0, 1]).

    A map with nothing to scale (all zero, or constant for min_max) becomes zeros, not NaN.
    """
    if mode == "none":
        return m
    if mode == "max_abs":
        scale = float(m.abs().max()) if m.numel() else 0.0
        return m / scale if scale > 0 else torch.zeros_like(m)
    if mode == "min_max":
        low, high = (float(m.min()), float(m.max())) if m.numel() else (0.0, 0.0)
        return (m - low) / (high - low) if high > low else torch.zeros_like(m)
    raise ValueError(f"unknown normalization {mode!r}")


def attribution_to_proto(
    a: Attribution,
    options: OutputOptions,
    rgb: np.ndarray | None,
    signed: bool,
    queue_ms: float,
    compute_ms: float,
) -> pb.Attribution:
    """A domain Attribution (map [H, W]) -> `Attribution` message per the output options.

    The overlay (when asked for and `rgb` [H0, W0, 3] is given) is drawn from the raw map at
    the photograph's size, so it looks the same whatever normalisation the values get.
    """
    raw = a.map.detach().to("cpu", torch.float32)
    message = pb.Attribution(
        method=method_enum(a.method),
        target=int(a.target),
        map=tensor_to_proto(normalize_values(raw, options.normalization), DTYPE_VALUES[options.map_dtype]),
        queue_ms=float(queue_ms),
        compute_ms=float(compute_ms),
    )
    for key, value in a.stats.items():
        message.stats[key] = float(value)
    if options.include_overlay and rgb is not None:
        message.overlay_png = render.encode_png(render.overlay(rgb, raw, signed=signed))
    return message


def predictions_to_proto(predictions: Sequence[Prediction]) -> list[pb.Prediction]:
    return [
        pb.Prediction(class_index=p.class_index, label=p.label, logit=p.logit, probability=p.probability)
        for p in predictions
    ]


def predictions_from_proto(predictions: Sequence[pb.Prediction]) -> list[Prediction]:
    # Logits and probabilities travel as float32; the float32 value is what the server had.
    return [Prediction(p.class_index, p.label, p.logit, p.probability) for p in predictions]


def model_info_to_proto(spec: ModelSpec, limits: Limits) -> pb.ModelInfo:
    """A served model -> `ModelInfo` with every method of the API that can explain it, with
    its parameters and limits."""
    height, width = spec.input_size
    info = pb.ModelInfo(
        name=spec.name,
        description=spec.description,
        height=height,
        width=width,
        channels=len(spec.mean),
        mean=list(spec.mean),
        std=list(spec.std),
        num_classes=spec.num_classes,
        max_targets=min(limits.max_targets, spec.num_classes),
        pretrained=spec.pretrained,
        architecture=spec.architecture,
    )
    for value, name in sorted(METHOD_NAMES.items()):
        method = get_method(name)
        if method.unsupported_reason(spec) is not None:
            continue  # only what the model can be explained with
        info.methods.append(
            pb.MethodInfo(
                method=value,
                name=name,
                kind=method.kind,
                summary=method.summary,
                parameters=parameter_infos(method.params_type, limits),
            )
        )
    return info


# ---------------------------------------------------------------------- results (client side)


@dataclass
class ExplainResult:
    """What `Explain` returned (or `ExplainStream`'s first event: the fast maps only)."""

    model: str
    request_id: str
    predictions: list[Prediction]
    targets: tuple[int, ...]
    attributions: list[Attribution]  # stats include queue_ms and compute_ms
    overlays: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (method, target) -> PNG
    quality: list[Any] = field(default_factory=list)  # quality.evaluate.QualityScore, with evaluate
    policy: Any = None  # quality.policy.PolicyDecision, when a policy was set


@dataclass
class AttributionEvent:
    """A later `ExplainStream` event: one deep map (and its overlay PNG when asked for)."""

    attribution: Attribution
    overlay_png: bytes | None = None


@dataclass
class QualityReport:
    """The last `ExplainStream` event of a request with `evaluate`: its quality scores."""

    scores: list[Any]  # quality.evaluate.QualityScore


def attribution_from_proto(message: pb.Attribution) -> Attribution:
    """`Attribution` message -> domain Attribution with a float32 map [H, W].

    queue_ms and compute_ms go into `stats`. A method this client does not know keeps its
    enum name, lower-cased, rather than failing the whole response.
    """
    method = method_name(message.method)
    stats = dict(message.stats)
    stats["queue_ms"] = message.queue_ms
    stats["compute_ms"] = message.compute_ms
    return Attribution(
        method=method,
        target=message.target,
        map=tensor_from_proto(message.map, "attribution.map", MAX_MAP_ELEMENTS),
        stats=stats,
    )


def explain_request_to_proto(
    model: str,
    image: bytes | torch.Tensor,
    methods: Mapping[str, Any],
    targets: Targets | None = None,
    output: OutputOptions | None = None,
    request_id: str | None = None,
    evaluate: Any = None,
    ground_truth: Any = None,
    policy: Any = None,
) -> pb.ExplainRequest:
    """Client side: encoded image bytes, or a normalised model input [3, H, W], -> request.

    evaluate: quality.evaluate.EvaluateOptions; ground_truth: a box (x_min, y_min, x_max,
    y_max) or a mask [H0, W0] in pixels of the image sent; policy: quality.policy.PolicyOptions.
    """
    request = pb.ExplainRequest(
        model=model,
        targets=targets_to_proto(targets or Targets()),
        methods=method_requests_to_proto(methods),
        output=output_options_to_proto(output or OutputOptions()),
        request_id=request_id or "",
    )
    if isinstance(image, torch.Tensor):
        request.tensor.CopyFrom(tensor_to_proto(image))
    elif isinstance(image, (bytes, bytearray, memoryview)):
        request.image = bytes(image)
    else:
        raise InvalidArgument(f"expected encoded image bytes or a tensor, got {type(image).__name__}", "input")
    if evaluate is not None or ground_truth is not None:
        from saliency.quality.evaluate import EvaluateOptions

        request.evaluate.CopyFrom(evaluate_to_proto(evaluate or EvaluateOptions(), ground_truth))
    if policy is not None:
        apply_policy_to_proto(request, policy)
    return request


def explain_response_from_proto(response: pb.ExplainResponse) -> ExplainResult:
    attributions, overlays = [], {}
    for message in response.attributions:
        a = attribution_from_proto(message)
        attributions.append(a)
        if message.overlay_png:
            overlays[(a.method, a.target)] = message.overlay_png
    return ExplainResult(
        model=response.model,
        request_id=response.request_id,
        predictions=predictions_from_proto(response.predictions),
        targets=tuple(response.targets),
        attributions=attributions,
        overlays=overlays,
        quality=[quality_score_from_proto(q) for q in response.quality],
        policy=policy_decision_from_proto(response.policy) if response.HasField("policy") else None,
    )


def explain_event_from_proto(event: pb.ExplainEvent) -> ExplainResult | AttributionEvent | Any:
    """First stream event -> ExplainResult (fast maps); later ones -> AttributionEvent; then a
    PolicyDecision and a QualityReport when the request asked for them."""
    which = event.WhichOneof("event")
    if which == "prediction":
        return explain_response_from_proto(event.prediction)
    if which == "attribution":
        return AttributionEvent(attribution_from_proto(event.attribution), event.attribution.overlay_png or None)
    if which == "policy":
        return policy_decision_from_proto(event.policy)
    if which == "quality":
        return QualityReport([quality_score_from_proto(q) for q in event.quality.scores])
    raise ValueError("empty ExplainEvent (a newer server?)")
