"""Images in Vertex / KServe V1 `instances`: `{"b64": "..."}`, `{"<input>": {"b64": "..."}}`
(Vertex image models name the input, e.g. `image_bytes` or `bytes_inputs`), or a bare base64
string; and the bounds on how many one request may carry."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from saliency.errors import InvalidArgument

MAX_INSTANCES = 16


@dataclass(frozen=True)
class ImageInstance:
    data: bytes  # the encoded image, as sent
    key: str  # the input's name ("" for {"b64": ...} or a bare string)
    field: str  # where it is in the body, for errors: instances[0].image_bytes.b64


def _b64(text, field: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidArgument(f"must be a base64 string, not {type(text).__name__}", field)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # the URL-safe alphabet, which protobuf's JSON mapping accepts too
            return base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            raise InvalidArgument("is not base64", field) from None


def image_instances(value: dict) -> list[ImageInstance]:
    """`value["instances"]` as images, each validated; InvalidArgument naming the field."""
    if "instances" not in value:
        raise InvalidArgument("is required: a list of images, e.g. [{\"b64\": \"<base64 JPEG>\"}]", "instances")
    instances = value["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument("must be a non-empty list", "instances")
    if len(instances) > MAX_INSTANCES:
        raise InvalidArgument(f"{len(instances)} instances; at most {MAX_INSTANCES} per request", "instances")
    return [_instance(item, f"instances[{i}]") for i, item in enumerate(instances)]


def _instance(item, field: str) -> ImageInstance:
    if isinstance(item, str):
        return ImageInstance(_b64(item, field), "", field)
    if not isinstance(item, dict):
        raise InvalidArgument(f"must be an object such as {{\"b64\": ...}}, not {type(item).__name__}", field)
    if set(item) == {"b64"}:
        return ImageInstance(_b64(item["b64"], f"{field}.b64"), "", f"{field}.b64")
    if len(item) == 1:
        key, inner = next(iter(item.items()))
        if isinstance(inner, dict) and set(inner) == {"b64"}:
            return ImageInstance(_b64(inner["b64"], f"{field}.{key}.b64"), key, f"{field}.{key}.b64")
    raise InvalidArgument(
        f"holds {sorted(item)[:8]}; an image instance is {{\"b64\": ...}} or {{\"<input name>\": {{\"b64\": ...}}}}",
        field,
    )
