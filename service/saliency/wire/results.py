"""Responses -> plain values with numpy maps (client side).

`Explain` gives an ExplainResult; `ExplainStream` gives an ExplainResult (the prediction and
the fast maps), an AttributionEvent per deep map, then a PolicyDecision and a QualityReport
when the request asked for them; `SanityCheck` gives a SanityCheckResult.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from saliency.v1 import explainer_pb2 as pb
from saliency.wire.arrays import MAX_MAP_ELEMENTS, array_from_proto
from saliency.wire.tables import RANDOMIZATIONS, method_name
from saliency.wire.types import (
    InputRegion,
    MethodChoice,
    PolicyDecision,
    Prediction,
    QualityScore,
    SimilarityRow,
)


@dataclass
class MapResult:
    """One map as it came back: `method` explaining class `target`.

    map: float32 [H, W] (the model input's size, or the image's with map_size "original", NaN
    outside the part the model saw). stats: the method's numbers plus queue_ms and compute_ms.
    """

    method: str
    target: int
    map: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)
    cached: bool = False  # served from the explanation cache, not computed for this request


@dataclass
class ExplainResult:
    """What `Explain` returned (or `ExplainStream`'s first event: the fast maps only)."""

    model: str
    request_id: str
    predictions: list[Prediction]
    targets: tuple[int, ...]
    attributions: list[MapResult]
    overlays: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (method, target) -> PNG
    quality: list[QualityScore] = field(default_factory=list)  # with evaluate
    policy: PolicyDecision | None = None  # when a policy was set
    # The part of the image sent that the model saw (Attribution.region); None when the server
    # did not say (an older server, or no maps).
    region: InputRegion | None = None


@dataclass
class AttributionEvent:
    """A later `ExplainStream` event: one deep map (and its overlay PNG when asked for)."""

    attribution: MapResult
    overlay_png: bytes | None = None
    region: InputRegion | None = None  # as ExplainResult.region


@dataclass
class QualityReport:
    """The last `ExplainStream` event of a request with `evaluate`: its quality scores."""

    scores: list[QualityScore]


@dataclass(frozen=True)
class SanityCheckResult:
    """What SanityCheck returned."""

    model: str
    target: int
    layers: tuple[str, ...]
    rows: list[SimilarityRow]
    weights_sha256: str


Event = ExplainResult | AttributionEvent | PolicyDecision | QualityReport


def map_from_proto(message: pb.Attribution) -> MapResult:
    """`Attribution` message -> MapResult; queue_ms and compute_ms go into `stats`. A method
    this stub does not know keeps its enum name, lower-cased, rather than failing."""
    stats = dict(message.stats)
    stats["queue_ms"] = message.queue_ms
    stats["compute_ms"] = message.compute_ms
    return MapResult(
        method=method_name(message.method),
        target=message.target,
        map=array_from_proto(message.map, "attribution.map", MAX_MAP_ELEMENTS),
        stats=stats,
        cached=message.cached,
    )


def predictions_from_proto(predictions: Sequence[pb.Prediction]) -> list[Prediction]:
    # Logits and probabilities travel as float32; the float32 value is what the server had.
    return [Prediction(p.class_index, p.label, p.logit, p.probability) for p in predictions]


def input_region_from_proto(message: pb.Attribution) -> InputRegion | None:
    """Attribution.region -> InputRegion; None when unset."""
    if not message.HasField("region"):
        return None
    r = message.region
    return InputRegion(r.x_min, r.y_min, r.x_max, r.y_max)


def quality_score_from_proto(message: pb.QualityScore) -> QualityScore:
    return QualityScore(
        message.metric,
        method_name(message.method),
        message.target,
        message.value,
        method_name(message.other_method) if message.other_method else "",
        message.other_target if message.HasField("other_target") else -1,
    )


def policy_decision_from_proto(message: pb.PolicyDecision) -> PolicyDecision:
    return PolicyDecision(
        message.deep_maps,
        message.reason,
        [
            MethodChoice(
                method_name(c.requested),
                method_name(c.chosen) if c.chosen else "",
                c.reason,
                c.n_steps,
                c.completeness_error if c.HasField("completeness_error") else None,
                c.target if c.HasField("target") else None,
            )
            for c in message.choices
        ],
        message.budget_ms if message.HasField("budget_ms") else None,
        message.sample_ms,
    )


def explain_response_from_proto(response: pb.ExplainResponse) -> ExplainResult:
    attributions, overlays, region = [], {}, None
    for message in response.attributions:
        a = map_from_proto(message)
        attributions.append(a)
        region = region or input_region_from_proto(message)
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
        region=region,
    )


def explain_event_from_proto(event: pb.ExplainEvent) -> Event:
    """One `ExplainStream` event -> ExplainResult | AttributionEvent | PolicyDecision |
    QualityReport (in that order of arrival)."""
    which = event.WhichOneof("event")
    if which == "prediction":
        return explain_response_from_proto(event.prediction)
    if which == "attribution":
        return AttributionEvent(
            map_from_proto(event.attribution),
            event.attribution.overlay_png or None,
            input_region_from_proto(event.attribution),
        )
    if which == "policy":
        return policy_decision_from_proto(event.policy)
    if which == "quality":
        return QualityReport([quality_score_from_proto(q) for q in event.quality.scores])
    raise ValueError("empty ExplainEvent (a newer server?)")


def sanity_rows_from_proto(response: pb.SanityCheckResponse) -> list[SimilarityRow]:
    return [
        SimilarityRow(
            RANDOMIZATIONS.get(s.randomization, str(s.randomization)), s.layer, method_name(s.method),
            s.spearman_abs, s.spearman_signed, s.ssim, s.hog,
        )
        for s in response.similarities
    ]


def sanity_response_from_proto(response: pb.SanityCheckResponse) -> SanityCheckResult:
    return SanityCheckResult(
        response.model, response.target, tuple(response.layers), sanity_rows_from_proto(response),
        response.weights_sha256,
    )
