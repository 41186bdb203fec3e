"""Requests from plain values (client side): the inverse of the server's request decoders.

An image is sent as encoded bytes (PNG/JPEG/WebP) or as the normalised model input
[3, H, W] (a numpy array, or anything array-like: a torch tensor works too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from saliency.errors import InvalidArgument
from saliency.v1 import explainer_pb2 as pb
from saliency.wire.arrays import array_to_proto
from saliency.wire.params import method_requests_to_proto
from saliency.wire.tables import (
    DTYPE_VALUES,
    MAP_SIZE_VALUES,
    NORMALIZATION_VALUES,
    QUALITY_METRIC_VALUES,
    RANDOMIZATION_VALUES,
    enum_value,
)
from saliency.wire.types import OutputOptions, Targets

_EVALUATE_FIELDS = ("metrics", "perturbation_steps", "top_fraction", "pointing_tolerance")


def targets_to_proto(targets: Any) -> pb.Targets:
    """Targets (or anything with `top_k` and `classes`) -> `Targets` message."""
    if targets.classes:
        return pb.Targets(classes=pb.ClassList(indices=list(targets.classes)))
    return pb.Targets(top_k=targets.top_k)


def output_options_to_proto(options: OutputOptions) -> pb.OutputOptions:
    options.validate()
    return pb.OutputOptions(
        map_dtype=DTYPE_VALUES[options.map_dtype],
        normalization=NORMALIZATION_VALUES[options.normalization],
        include_overlay=options.include_overlay,
        top_predictions=options.top_predictions,
        map_size=MAP_SIZE_VALUES[options.map_size],
    )


def evaluate_to_proto(options: Any = None, ground_truth: Any = None) -> pb.EvaluateOptions:
    """Quality options and a ground truth in pixels of the image sent -> `EvaluateOptions`.

    options: quality.evaluate.EvaluateOptions (its `region` unused), a mapping of its fields
    (metrics, perturbation_steps, top_fraction, pointing_tolerance), or None: the server's
    defaults. ground_truth: a box (x_min, y_min, x_max, y_max) or a mask array [H0, W0].
    """
    if isinstance(options, Mapping):
        values = dict(options)
    else:
        values = {k: getattr(options, k) for k in _EVALUATE_FIELDS if options is not None}
    unknown = sorted(set(values) - set(_EVALUATE_FIELDS))
    if unknown:
        raise InvalidArgument(f"unknown option(s) {unknown}; known: {list(_EVALUATE_FIELDS)}", "evaluate")
    metrics = values.pop("metrics", ())
    message = pb.EvaluateOptions(
        metrics=[enum_value(QUALITY_METRIC_VALUES, m, f"evaluate.metrics[{i}]") for i, m in enumerate(metrics)]
    )
    for name, value in values.items():
        try:
            setattr(message, name, value)
        except (TypeError, ValueError) as exc:  # wrong type, or over int32
            raise InvalidArgument(f"{value!r} cannot be sent: {exc}", f"evaluate.{name}") from None
    if ground_truth is None:
        return message
    if isinstance(ground_truth, Sequence) and len(ground_truth) == 4 and not hasattr(ground_truth, "shape"):
        x_min, y_min, x_max, y_max = ground_truth
        message.ground_truth.box.CopyFrom(pb.Box(x_min=x_min, y_min=y_min, x_max=x_max, y_max=y_max))
    else:
        message.ground_truth.mask.CopyFrom(array_to_proto(ground_truth))
    return message


def apply_policy_to_proto(request: pb.ExplainRequest, policy: Any) -> None:
    """Set the request's policy fields from PolicyOptions."""
    if policy.latency_budget_ms is not None:
        request.latency_budget_ms = policy.latency_budget_ms
    if policy.completeness_target is not None:
        request.completeness_target = policy.completeness_target
    if policy.explain_if is not None:
        request.explain_if.SetInParent()
        if policy.explain_if.margin_below is not None:
            request.explain_if.margin_below = policy.explain_if.margin_below
        if policy.explain_if.probability_below is not None:
            request.explain_if.probability_below = policy.explain_if.probability_below


def set_input(request: pb.ExplainRequest | pb.SanityCheckRequest, image: Any) -> None:
    """The request's `input` oneof: encoded image bytes, or a model input array [3, H, W]."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        request.image = bytes(image)
    elif hasattr(image, "shape"):
        request.tensor.CopyFrom(array_to_proto(image))
    else:
        raise InvalidArgument(
            f"expected encoded image bytes or a model input array, got {type(image).__name__}", "input"
        )


def explain_request_to_proto(
    model: str,
    image: Any,
    methods: Mapping[str, Any],
    targets: Any = None,
    output: OutputOptions | None = None,
    request_id: str | None = None,
    evaluate: Any = None,
    ground_truth: Any = None,
    policy: Any = None,
) -> pb.ExplainRequest:
    """An `ExplainRequest`. methods: {registry name: params} (`params`); targets: Targets
    (default top-1); evaluate / ground_truth: see evaluate_to_proto; policy: PolicyOptions."""
    request = pb.ExplainRequest(
        model=model,
        targets=targets_to_proto(targets or Targets()),
        methods=method_requests_to_proto(methods),
        output=output_options_to_proto(output or OutputOptions()),
        request_id=request_id or "",
    )
    set_input(request, image)
    if evaluate is not None or ground_truth is not None:
        request.evaluate.CopyFrom(evaluate_to_proto(evaluate, ground_truth))
    if policy is not None:
        apply_policy_to_proto(request, policy)
    return request


def sanity_request_to_proto(
    model: str,
    image: Any,
    methods: Mapping[str, Any],
    layers: Sequence[str] = (),
    modes: Sequence[str] = (),
    target: int | None = None,
    seed: int | None = None,
) -> pb.SanityCheckRequest:
    """A `SanityCheckRequest`: model randomisation of `layers` (default: the model's
    checkpoints) under the randomisation `modes` (default both) for `methods`."""
    request = pb.SanityCheckRequest(
        model=model,
        methods=method_requests_to_proto(methods),
        layers=list(layers),
        randomizations=[enum_value(RANDOMIZATION_VALUES, m, f"randomizations[{i}]") for i, m in enumerate(modes)],
    )
    if target is not None:
        request.target = target
    if seed is not None:
        request.seed = seed
    set_input(request, image)
    return request
