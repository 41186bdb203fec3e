"""`Tensor` messages <-> torch tensors, and a request's `input` oneof -> the model input.

The torch face of the wire's arrays (`saliency.wire.arrays`, numpy), shared by every codec in
this package (`convert`, `method_params`, `quality_codec`), which is why they sit below all
of them. Every check names the request path of the field at fault (InvalidArgument, or
ResourceExhausted for size limits).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from saliency.errors import InvalidArgument, require
from saliency.imaging import ImageLimits, decode_image, to_model_input, validate_input_tensor
from saliency.models import ModelSpec
from saliency.v1 import explainer_pb2 as pb
from saliency.wire.arrays import (
    MAX_MAP_ELEMENTS,  # noqa: F401 (the backends' replies use it)
    array_from_proto,
    array_to_proto,
    shape_text,
)

# ----------------------------------------------------------------------------------- tensors


def tensor_from_proto(t: pb.Tensor, field: str, max_elements: int) -> torch.Tensor:
    """A `Tensor` message -> a float32 torch tensor of its shape (float16 data is widened).

    The checks are `saliency.wire.arrays.array_from_proto`'s, each naming `field`.
    """
    return torch.from_numpy(array_from_proto(t, field, max_elements))


def tensor_to_proto(t: torch.Tensor, dtype: int = pb.DTYPE_FLOAT32) -> pb.Tensor:
    """Any float tensor -> a little-endian, C-order `Tensor` message of `dtype`.

    For float16, finite values beyond its range saturate at +-65504 rather than becoming Inf.
    """
    return array_to_proto(t, dtype)


# ------------------------------------------------------------------------------------ input


def input_from_request(
    request: pb.ExplainRequest | pb.SanityCheckRequest, spec: ModelSpec, image_limits: ImageLimits
) -> tuple[torch.Tensor, np.ndarray]:
    """The request's input -> (x [3, H, W] normalised float32, rgb uint8 [H0, W0, 3]).

    Both request types carry the same `input` oneof (`image` | `tensor`).

    `image`: decoded under `image_limits` and resized to the model's input size; rgb is the
    decoded photograph. `tensor`: already normalised model input of exactly the model's
    input shape [3, h, w], validated (shape, NaN); rgb is its de-normalisation, for overlays.
    """
    which = request.WhichOneof("input")
    if which == "image":
        rgb = decode_image(request.image, image_limits, field="image")
        return to_model_input(rgb, spec), rgb
    if which == "tensor":
        check_input_shape(request, spec)
        raw = tensor_from_proto(request.tensor, "tensor", 3 * math.prod(spec.input_size))
        x = validate_input_tensor(raw, spec, "tensor")
        return x, _rgb_pixels(x, spec)
    raise InvalidArgument("set `image` (PNG/JPEG/WebP bytes) or `tensor` (model input)", "input")


def check_input_shape(request: pb.ExplainRequest | pb.SanityCheckRequest, spec: ModelSpec) -> None:
    """A tensor input must have exactly the model's input shape [3, h, w]: checked from the
    message before any data is read (cheap enough to run before admission), so a wrong size is
    an invalid argument whatever its size and nothing beyond the model's input is decoded."""
    if request.WhichOneof("input") != "tensor":
        return
    expected = [3, *spec.input_size]
    shape = request.tensor.shape
    require(
        len(shape) == len(expected) and list(shape) == expected,
        "tensor.shape",
        f"expected {expected} (model {spec.name}'s input size), got {shape_text(shape)}; "
        "send an encoded image to have it resized",
    )


def _rgb_pixels(x: torch.Tensor, spec: ModelSpec) -> np.ndarray:
    """Normalised [3, H, W] -> uint8 [H, W, 3] pixels (clipped to the displayable range).

    numpy, in place, as ModelSpec.denormalize computes: torch's small ops on a thread of the
    prepare pool start an OpenMP team each and took twice as long (bench explanation_cache)."""
    pixels = x.detach().cpu().numpy() * np.asarray(spec.std, np.float32)[:, None, None]
    pixels += np.asarray(spec.mean, np.float32)[:, None, None]
    np.clip(pixels, 0, 1, out=pixels)
    pixels *= 255
    np.rint(pixels, out=pixels)
    return pixels.transpose(1, 2, 0).astype(np.uint8, order="C")
