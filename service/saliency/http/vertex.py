"""Vertex AI's online explanation API, for clients that only change the URL (docs/http.md has
the field-by-field table).

`POST /v1/projects/{p}/locations/{l}/endpoints/{endpoint}:explain` (and the short alias
`/v1/endpoints/{endpoint}:explain`) take Vertex's `instances` (images, instances.py),
`parameters` (`maxPredictions`, `confidenceThreshold`) and `explanationSpecOverride` (the
method and its step count, `topK` / `outputIndices`, and the input's `visualization`); the
endpoint id is the name of a served model. Each instance becomes one ExplainRequest through the
servicer's core; the answer is Vertex's `explanations[].attributions[]` plus `predictions`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from saliency import render
from saliency.errors import InvalidArgument, NotFound, Unimplemented
from saliency.http import visualize
from saliency.http.instances import ImageInstance, image_instances
from saliency.http.kserve import prediction
from saliency.imaging import ImageLimits, decode_image
from saliency.v1 import explainer_pb2 as pb

OUTPUT_NAME = "logits"  # what the explained output is: the class's pre-softmax score
DEFAULT_KEY = "image"  # featureAttributions' key for an instance sent as {"b64": ...}
_OVERRIDE = "explanationSpecOverride"
_PARAMETERS = f"{_OVERRIDE}.parameters"


@dataclass(frozen=True)
class Plan:
    explain: bool
    instances: list[ImageInstance]
    requests: list[pb.ExplainRequest]
    method: int
    visualization: visualize.Visualization
    confidence_threshold: float


def model_for_endpoint(endpoint: str, models: Mapping) -> str:
    """The endpoint id names the model it serves."""
    if endpoint in models:
        return endpoint
    raise NotFound(f"{endpoint[:128]!r} is not a served model; endpoints are model names: {', '.join(sorted(models))}",
                   "endpoint")


def _object(value, field: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"must be an object, not {type(value).__name__}", field)
    return value


def _only(value: dict, known: set[str], field: str) -> None:
    unknown = sorted(set(value) - known)
    if unknown:
        raise InvalidArgument(f"is not supported here (supported: {', '.join(sorted(known)) or 'none'})",
                              f"{field}.{unknown[0][:64]}" if field else unknown[0][:64])


def _int(value, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or not low <= value <= high:
        raise InvalidArgument(f"{value!r} is not an integer in [{low}, {high}]", field)
    return int(value)


def _flat_ints(value, field: str) -> list[int]:
    """outputIndices: an ndarray of integers (ListValue), any nesting."""
    if not isinstance(value, list):
        raise InvalidArgument("must be a list of class indices", field)
    out: list[int] = []
    for i, item in enumerate(value):
        out.extend(_flat_ints(item, f"{field}[{i}]") if isinstance(item, list) else [_int(item, f"{field}[{i}]", 0, 2**31 - 1)])
    return out


def _method(parameters: dict, request: pb.ExplainRequest) -> int:
    """The attribution method of explanationSpecOverride.parameters, added to `request`."""
    chosen = [name for name in ("integratedGradientsAttribution", "xraiAttribution", "sampledShapleyAttribution",
                                "examples") if name in parameters]
    if len(chosen) > 1:
        raise InvalidArgument(f"name one method, not {', '.join(chosen)}", f"{_PARAMETERS}.{chosen[1]}")
    name = chosen[0] if chosen else "integratedGradientsAttribution"
    field = f"{_PARAMETERS}.{name}"
    if name in ("sampledShapleyAttribution", "examples"):
        raise Unimplemented("is not served for images; use integratedGradientsAttribution or xraiAttribution "
                            "(or KernelSHAP through the native API)", field)
    spec = _object(parameters.get(name), field)
    _only(spec, {"stepCount", "smoothGradConfig", "blurBaselineConfig"}, field)
    for unsupported, why in (("smoothGradConfig", "noise-smoothed path gradients are not served; ask the native API "
                                                  "for METHOD_SMOOTHGRAD beside integrated gradients"),
                             ("blurBaselineConfig", "blur-path integrated gradients are not served; the native API "
                                                    "has a blurred baseline (BASELINE_BLUR)")):
        if spec.get(unsupported):
            raise Unimplemented(why, f"{field}.{unsupported}")
    steps = _int(spec["stepCount"], f"{field}.stepCount", 1, 2**31 - 1) if "stepCount" in spec else None
    if name == "xraiAttribution":
        method = request.methods.add(method=pb.METHOD_XRAI)
        if steps is not None:
            method.xrai.n_steps = steps
        return pb.METHOD_XRAI
    method = request.methods.add(method=pb.METHOD_INTEGRATED_GRADIENTS)
    if steps is not None:
        method.integrated_gradients.n_steps = steps
    return pb.METHOD_INTEGRATED_GRADIENTS


def _visualization(metadata: dict, method: int) -> visualize.Visualization:
    """metadata.inputs.<name>.visualization (one input: images have one)."""
    default = visualize.XRAI_DEFAULT if method == pb.METHOD_XRAI else visualize.IG_DEFAULT
    field = f"{_OVERRIDE}.metadata"
    _only(metadata, {"inputs"}, field)
    inputs = _object(metadata.get("inputs"), f"{field}.inputs")
    if len(inputs) > 1:
        raise InvalidArgument("an image model has one input; name one", f"{field}.inputs")
    for name, value in inputs.items():
        where = f"{field}.inputs.{name}"
        value = _object(value, where)
        _only(value, {"inputBaselines", "visualization"}, where)
        if value.get("inputBaselines"):
            raise Unimplemented("custom baselines are not taken here; the native API takes one "
                                "(integrated_gradients.custom_baseline)", f"{where}.inputBaselines")
        if "visualization" in value:
            return visualize.visualization_from(_object(value["visualization"], f"{where}.visualization"), default,
                                                f"{where}.visualization")
    return default


def plan(value: dict, model: str, explain: bool, num_classes: int) -> Plan:
    """A Vertex body -> one ExplainRequest per instance; InvalidArgument / Unimplemented naming the field."""
    _only(value, {"instances", "parameters", "deployedModelId", *([_OVERRIDE] if explain else [])}, "")
    deployed = value.get("deployedModelId")
    if deployed not in (None, "", model):
        raise InvalidArgument(f"{str(deployed)[:128]!r} is not this endpoint's model, {model!r}", "deployedModelId")
    instances = image_instances(value)
    parameters = _object(value.get("parameters"), "parameters")
    _only(parameters, {"maxPredictions", "confidenceThreshold"}, "parameters")
    template = pb.ExplainRequest(model=model)
    if "maxPredictions" in parameters:
        template.output.top_predictions = _int(parameters["maxPredictions"], "parameters.maxPredictions", 1, num_classes)
    threshold = parameters.get("confidenceThreshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise InvalidArgument(f"{threshold!r} is not a probability in [0, 1]", "parameters.confidenceThreshold")
    method, visualization = pb.METHOD_UNSPECIFIED, visualize.IG_DEFAULT
    if explain:
        override = _object(value.get(_OVERRIDE), _OVERRIDE)
        _only(override, {"parameters", "metadata", "examplesOverride"}, _OVERRIDE)
        if override.get("examplesOverride"):
            raise Unimplemented("example-based explanations are not served", f"{_OVERRIDE}.examplesOverride")
        explanation = _object(override.get("parameters"), _PARAMETERS)
        _only(explanation, {"topK", "outputIndices", "integratedGradientsAttribution", "xraiAttribution",
                            "sampledShapleyAttribution", "examples"}, _PARAMETERS)
        method = _method(explanation, template)
        if "outputIndices" in explanation and explanation["outputIndices"]:
            indices = _flat_ints(explanation["outputIndices"], f"{_PARAMETERS}.outputIndices")
            template.targets.classes.indices.extend(indices)
        elif "topK" in explanation:
            top_k = explanation["topK"]
            template.targets.top_k = num_classes if top_k == -1 else _int(top_k, f"{_PARAMETERS}.topK", 1, num_classes)
        visualization = _visualization(_object(override.get("metadata"), f"{_OVERRIDE}.metadata"), method)
    requests = []
    for instance in instances:
        request = pb.ExplainRequest()
        request.CopyFrom(template)
        request.image = instance.data
        requests.append(request)
    return Plan(explain, instances, requests, method, visualization, float(threshold))


def _box(region: pb.Box, scale: float, size: tuple[int, int]) -> render.Box:
    top, bottom = max(0, round(region.y_min * scale)), min(size[0], round(region.y_max * scale))
    left, right = max(0, round(region.x_min * scale)), min(size[1], round(region.x_max * scale))
    return top, max(bottom, top + 1), left, max(right, left + 1)


def _attribution(a: pb.Attribution, response: pb.ExplainResponse, key: str, picture: np.ndarray, scale: float,
                 v: visualize.Visualization, labels: Sequence[str]) -> dict:
    values = np.frombuffer(a.map.data, dtype=np.float16 if a.map.dtype == pb.DTYPE_FLOAT16 else np.float32)
    values = values.reshape(tuple(a.map.shape)).astype(np.float32)
    size = picture.shape[:2]
    placed = render.place_map(values, size, _box(a.region, scale, size) if a.HasField("region") else None)
    jpeg = visualize.encode_jpeg(visualize.visualize(picture, placed, v))
    stats = dict(a.stats)
    # The model's own label: a target may be outside the predictions (topK over maxPredictions,
    # outputIndices of unlikely classes).
    label = labels[a.target] if 0 <= a.target < len(labels) else ""
    logit = next((p.logit for p in response.predictions if p.class_index == a.target), None)
    out = {
        "featureAttributions": {key: {
            "b64_jpeg": base64.b64encode(jpeg).decode(),
            # The map itself, float32 little-endian [H, W] at the model's input size.
            "b64_float32": base64.b64encode(values.astype("<f4").tobytes()).decode(),
            "shape": list(values.shape),
        }},
        "outputIndex": [a.target],
        "outputDisplayName": label,
        "outputName": OUTPUT_NAME,
    }
    # JSON has no NaN or Infinity: a value that is not finite (a completeness error with
    # F(x) = F(x'), an overflowing logit) is left out rather than fail the whole answer.
    score = stats.get("score_input", logit)
    if _finite(score):
        out["instanceOutputValue"] = score
    if _finite(stats.get("score_baseline")):
        out["baselineOutputValue"] = stats["score_baseline"]
    error = stats.get("completeness_error", stats.get("ig_completeness_error"))
    if _finite(error):
        out["approximationError"] = error
    return out


def _finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def answer(plan: Plan, responses: list[pb.ExplainResponse], model: str, limits: ImageLimits, max_side: int,
           labels: Sequence[str]) -> dict:
    """Vertex's ExplainResponse (or PredictResponse) for the core's answers, one per instance;
    `labels` are the model's class names."""
    predictions = []
    for response in responses:
        kept = pb.ExplainResponse()
        kept.predictions.extend(p for p in response.predictions if p.probability >= plan.confidence_threshold)
        predictions.append(prediction(kept))
    out: dict = {"deployedModelId": model, "predictions": predictions}
    if not plan.explain:
        return out
    explanations = []
    for instance, response in zip(plan.instances, responses, strict=True):
        # The core decoded it already (and refused what is over the limits); the picture is drawn
        # at the size overlays are, the region scaled to it.
        rgb = decode_image(instance.data, limits)
        picture = render.fit_within(rgb, max_side)
        scale = picture.shape[0] / rgb.shape[0]
        key = instance.key or DEFAULT_KEY
        explanations.append({"attributions": [
            _attribution(a, response, key, picture, scale, plan.visualization, labels) for a in response.attributions
        ]})
    out["explanations"] = explanations
    return out

