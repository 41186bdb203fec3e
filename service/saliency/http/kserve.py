"""KServe's V1 protocol: `POST /v1/models/{model}:predict` and `:explain` with `{"instances": [...]}`.

Each instance is an image (instances.py); `parameters`, when given, is the rest of an
`ExplainRequest` in protobuf's JSON mapping (methods, targets, output, ...) applied to every
instance. `:predict` answers `{"predictions": [...]}`; `:explain` adds `"explanations"`, one
`ExplainResponse` (JSON mapping) per instance. Without methods, `:explain` runs integrated
gradients at its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from saliency.errors import InvalidArgument
from saliency.http.codec import message_from_dict, message_to_dict
from saliency.http.instances import ImageInstance, image_instances
from saliency.v1 import explainer_pb2 as pb

DEFAULT_METHOD = pb.METHOD_INTEGRATED_GRADIENTS
_NOT_IN_PARAMETERS = ("model", "image", "tensor", "requestId", "request_id")


@dataclass(frozen=True)
class Plan:
    explain: bool
    instances: list[ImageInstance]
    requests: list[pb.ExplainRequest]


def plan(value: dict, model: str, explain: bool) -> Plan:
    """A V1 body -> one ExplainRequest per instance; InvalidArgument naming the field."""
    unknown = sorted(set(value) - {"instances", "parameters"})
    if unknown:
        raise InvalidArgument("is not a KServe V1 field (instances, parameters)", unknown[0][:64])
    instances = image_instances(value)
    template = pb.ExplainRequest()
    parameters = value.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise InvalidArgument("must be an object: ExplainRequest fields in protobuf's JSON mapping", "parameters")
        for name in _NOT_IN_PARAMETERS:
            if name in parameters:
                raise InvalidArgument("comes from the URL and the instances", f"parameters.{name}")
        template = message_from_dict(parameters, pb.ExplainRequest, "parameters.")
    if not explain and template.methods:
        raise InvalidArgument(":predict computes no maps; send the methods to :explain", "parameters.methods")
    if explain and not template.methods:
        template.methods.add(method=DEFAULT_METHOD)
    requests = []
    for instance in instances:
        request = pb.ExplainRequest()
        request.CopyFrom(template)
        request.model, request.image = model, instance.data
        requests.append(request)
    return Plan(explain, instances, requests)


def prediction(response: pb.ExplainResponse) -> dict:
    """One instance's classes, most probable first (the shape of Vertex's image classification)."""
    return {
        "ids": [p.class_index for p in response.predictions],
        "displayNames": [p.label for p in response.predictions],
        "confidences": [p.probability for p in response.predictions],
        "logits": [p.logit for p in response.predictions],
    }


def answer(plan: Plan, responses: list[pb.ExplainResponse]) -> dict:
    out = {"predictions": [prediction(r) for r in responses]}
    if plan.explain:
        out["explanations"] = [message_to_dict(r) for r in responses]
    return out
