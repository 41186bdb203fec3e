"""`Tensor` messages <-> torch tensors, and a request's `input` oneof -> the model input.

The wire's array primitives, shared by every codec in this package (`convert`,
`method_params`, `quality_codec`), which is why they sit below all of them. Every check names
the request path of the field at fault (InvalidArgument, or ResourceExhausted for size limits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from saliency.errors import InvalidArgument, ResourceExhausted, require
from saliency.imaging import ImageLimits, decode_image, to_model_input, validate_input_tensor
from saliency.models import ModelSpec
from saliency.v1 import explainer_pb2 as pb

# DType enum -> (name, little-endian numpy dtype). UNSPECIFIED means float32 (see the proto).
DTYPES: dict[int, tuple[str, str]] = {
    pb.DTYPE_UNSPECIFIED: ("float32", "<f4"),
    pb.DTYPE_FLOAT32: ("float32", "<f4"),
    pb.DTYPE_FLOAT16: ("float16", "<f2"),
}
DTYPE_VALUES = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16}
_FLOAT16_MAX = float(np.finfo(np.float16).max)

# A decoded map (or logits) from a backend reply: far above any model's input size.
MAX_MAP_ELEMENTS = 4096 * 4096
# No wire tensor needs more dimensions (numpy allows 64; a longer shape is an INTERNAL there).
MAX_DIMS = 8


def shape_text(shape: Sequence[int]) -> str:
    """A shape for an error message, bounded however many dimensions the client sent."""
    if len(shape) <= MAX_DIMS:
        return str([int(d) for d in shape])
    head = ", ".join(str(int(d)) for d in shape[:MAX_DIMS])
    return f"[{head}, ...] ({len(shape)} dimensions)"


# ----------------------------------------------------------------------------------- tensors


def tensor_from_proto(t: pb.Tensor, field: str, max_elements: int) -> torch.Tensor:
    """A `Tensor` message -> a float32 torch tensor of its shape (float16 data is widened).

    Checks, each naming `field`: a known dtype (UNSPECIFIED = float32), at most MAX_DIMS
    non-negative dims, at most `max_elements` elements (ResourceExhausted), and exactly
    prod(shape) * itemsize bytes of data. Values are not checked for NaN here: callers that
    need finite values do.
    """
    if t.dtype not in DTYPES:
        raise InvalidArgument(
            f"unknown dtype {t.dtype}; use DTYPE_FLOAT32 or DTYPE_FLOAT16", f"{field}.dtype"
        )
    _, np_dtype = DTYPES[t.dtype]
    require(
        len(t.shape) <= MAX_DIMS,
        f"{field}.shape",
        f"{shape_text(t.shape)} has more than {MAX_DIMS} dimensions",
    )
    shape = [int(d) for d in t.shape]
    require(all(d >= 0 for d in shape), f"{field}.shape", f"negative dimension in {shape}")
    n = math.prod(shape)  # Python ints: no overflow on absurd shapes
    if n > max_elements:
        raise ResourceExhausted(
            f"shape {shape} has {n} elements, over the limit of {max_elements}", f"{field}.shape"
        )
    itemsize = np.dtype(np_dtype).itemsize
    require(
        len(t.data) == n * itemsize,
        f"{field}.data",
        f"{len(t.data)} bytes, but shape {shape} of {DTYPES[t.dtype][0]} needs {n * itemsize}",
    )
    array = np.frombuffer(t.data, dtype=np_dtype).reshape(shape)
    # astype copies: frombuffer's array is read-only and torch warns on those.
    return torch.from_numpy(array.astype(np.float32))


def tensor_to_proto(t: torch.Tensor, dtype: int = pb.DTYPE_FLOAT32) -> pb.Tensor:
    """Any float tensor -> a little-endian, C-order `Tensor` message of `dtype`.

    For float16, finite values beyond its range saturate at +-65504 rather than becoming Inf.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown DType value {dtype}")
    _, np_dtype = DTYPES[dtype]
    array = t.detach().to("cpu", torch.float32).contiguous().numpy()
    if np_dtype == "<f2":
        array = np.where(np.isfinite(array), np.clip(array, -_FLOAT16_MAX, _FLOAT16_MAX), array)
    data = np.ascontiguousarray(array, dtype=np_dtype).tobytes()
    return pb.Tensor(shape=list(array.shape), dtype=dtype or pb.DTYPE_FLOAT32, data=data)


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
    """Normalised [3, H, W] -> uint8 [H, W, 3] pixels (clipped to the displayable range)."""
    pixels = spec.denormalize(x).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())
