"""`Tensor` messages <-> numpy arrays: the wire's one array format (little-endian, C order).

Server-side callers wrap these for torch (`saliency.codec.tensors`); the client uses them as
they are. Every check names the request path of the field at fault (InvalidArgument, or
ResourceExhausted for size limits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from saliency.errors import InvalidArgument, ResourceExhausted, require
from saliency.v1 import explainer_pb2 as pb
from saliency.wire.tables import DTYPES

_FLOAT16_MAX = float(np.finfo(np.float16).max)

# A decoded map (or logits) from a reply: far above any model's input size.
MAX_MAP_ELEMENTS = 4096 * 4096
# No wire tensor needs more dimensions (numpy allows 64; a longer shape is an INTERNAL there).
MAX_DIMS = 8


def shape_text(shape: Sequence[int]) -> str:
    """A shape for an error message, bounded however many dimensions the client sent."""
    if len(shape) <= MAX_DIMS:
        return str([int(d) for d in shape])
    head = ", ".join(str(int(d)) for d in shape[:MAX_DIMS])
    return f"[{head}, ...] ({len(shape)} dimensions)"


def as_float32(value: Any) -> np.ndarray:
    """An array-like (numpy, a torch tensor on any device, nested lists) -> float32 ndarray.

    A torch tensor is recognised by its methods, so this module never imports torch.
    """
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def array_from_proto(t: pb.Tensor, field: str, max_elements: int) -> np.ndarray:
    """A `Tensor` message -> a writable float32 array of its shape (float16 data is widened).

    Checks, each naming `field`: a known dtype (UNSPECIFIED = float32), at most MAX_DIMS
    non-negative dims, at most `max_elements` elements (ResourceExhausted), and exactly
    prod(shape) * itemsize bytes of data. Values are not checked for NaN here: callers that
    need finite values do.
    """
    if t.dtype not in DTYPES:
        raise InvalidArgument(f"unknown dtype {t.dtype}; use DTYPE_FLOAT32 or DTYPE_FLOAT16", f"{field}.dtype")
    _, np_dtype = DTYPES[t.dtype]
    require(len(t.shape) <= MAX_DIMS, f"{field}.shape", f"{shape_text(t.shape)} has more than {MAX_DIMS} dimensions")
    shape = [int(d) for d in t.shape]
    require(all(d >= 0 for d in shape), f"{field}.shape", f"negative dimension in {shape}")
    n = math.prod(shape)  # Python ints: no overflow on absurd shapes
    if n > max_elements:
        raise ResourceExhausted(f"shape {shape} has {n} elements, over the limit of {max_elements}", f"{field}.shape")
    itemsize = np.dtype(np_dtype).itemsize
    require(
        len(t.data) == n * itemsize,
        f"{field}.data",
        f"{len(t.data)} bytes, but shape {shape} of {DTYPES[t.dtype][0]} needs {n * itemsize}",
    )
    # astype copies: frombuffer's array is read-only (and torch warns on those).
    return np.frombuffer(t.data, dtype=np_dtype).reshape(shape).astype(np.float32)


def array_to_proto(value: Any, dtype: int = pb.DTYPE_FLOAT32) -> pb.Tensor:
    """Any float array-like -> a little-endian, C-order `Tensor` message of `dtype`.

    For float16, finite values beyond its range saturate at +-65504 rather than becoming Inf.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown DType value {dtype}")
    _, np_dtype = DTYPES[dtype]
    array = as_float32(value)
    if np_dtype == "<f2":
        array = np.where(np.isfinite(array), np.clip(array, -_FLOAT16_MAX, _FLOAT16_MAX), array)
    data = np.ascontiguousarray(array, dtype=np_dtype).tobytes()
    return pb.Tensor(shape=list(array.shape), dtype=dtype or pb.DTYPE_FLOAT32, data=data)
