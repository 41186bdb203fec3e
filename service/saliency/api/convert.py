"""Protobuf <-> domain conversion for `saliency.v1`: the only module that knows both sides.

Server side (called by the servicer, which knows no torch): request messages become validated
domain values (`Targets`, method params, the model input) and domain results become response
messages. Client side: the inverse, so `ExplainerClient` speaks in domain types too.

Every value a user controls is checked here or by the params' own `validate`, and every error
is an `InvalidArgument` (or `ResourceExhausted` for size limits) whose field is the request
path to fix, e.g. `methods[1].integrated_gradients.n_steps`.

Method parameters are converted generically: each params dataclass field has a proto field of
the same name; `str` fields map to proto enums through the tables below, `optional` scalars
fall back to the dataclass default when unset, and enum value 0 (UNSPECIFIED) means default.
The bounds and choices that `ListModels` reports come from the fields' `metadata`, so the
params classes are the single source of truth.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from saliency import render
from saliency.attribution.limits import Limits
from saliency.attribution.registry import check_supported, get_method
from saliency.attribution.types import Attribution, Prediction, Targets
from saliency.errors import InvalidArgument, ResourceExhausted, SaliencyError, require
from saliency.imaging import ImageLimits, decode_image, to_model_input, validate_input_tensor
from saliency.models import ModelSpec
from saliency.v1 import explainer_pb2 as pb

# ------------------------------------------------------------------------------ enum tables

METHOD_NAMES: dict[int, str] = {
    pb.METHOD_VANILLA: "vanilla",
    pb.METHOD_INPUT_X_GRADIENT: "input_x_gradient",
    pb.METHOD_GRADCAM: "gradcam",
    pb.METHOD_GRADCAM_PP: "gradcam_pp",
    pb.METHOD_EIGENCAM: "eigencam",
    pb.METHOD_INTEGRATED_GRADIENTS: "ig",
    pb.METHOD_SMOOTHGRAD: "smoothgrad",
    pb.METHOD_RISE: "rise",
    pb.METHOD_CAM: "cam",
    pb.METHOD_SCORECAM: "scorecam",
    pb.METHOD_OCCLUSION: "occlusion",
    pb.METHOD_GUIDED_BACKPROP: "guided_backprop",
    pb.METHOD_DECONVNET: "deconvnet",
    pb.METHOD_GUIDED_GRADCAM: "guided_gradcam",
    pb.METHOD_DEEPLIFT: "deeplift",
    pb.METHOD_LRP: "lrp",
    pb.METHOD_GRADIENT_SHAP: "gradient_shap",
    pb.METHOD_XRAI: "xrai",
    pb.METHOD_KERNEL_SHAP: "kernel_shap",
    pb.METHOD_LIME: "lime",
    pb.METHOD_ATTENTION_ROLLOUT: "attention_rollout",
    pb.METHOD_RAW_ATTENTION: "raw_attention",
}
_METHOD_VALUES = {name: value for value, name in METHOD_NAMES.items()}

# Which member of MethodRequest's `params` oneof carries each method's parameters.
PARAMS_ONEOF: dict[str, str] = {
    "vanilla": "gradient",
    "input_x_gradient": "gradient",
    "gradcam": "cam",
    "gradcam_pp": "cam",
    "eigencam": "cam",
    "ig": "integrated_gradients",
    "smoothgrad": "smoothgrad",
    "rise": "rise",
    "cam": "cam",
    "scorecam": "scorecam",
    "occlusion": "occlusion",
    "kernel_shap": "kernel_shap",
    "lime": "lime",
    "guided_backprop": "guided_backprop",
    "deconvnet": "guided_backprop",
    "guided_gradcam": "guided_gradcam",
    "deeplift": "deeplift",
    "lrp": "lrp",
    "gradient_shap": "gradient_shap",
    "xrai": "xrai",
    "attention_rollout": "attention",
    "raw_attention": "attention",
}

# Proto enum (by full name) -> {value: the params field's string}. Value 0 (UNSPECIFIED) is
# absent on purpose: it means "the dataclass default", which may differ per method.
ENUM_STRINGS: dict[str, dict[int, str]] = {
    "saliency.v1.ChannelReduction": {
        pb.CHANNEL_REDUCTION_MAX: "max",
        pb.CHANNEL_REDUCTION_SUM: "sum",
        pb.CHANNEL_REDUCTION_L2: "l2",
    },
    "saliency.v1.IntegrationRule": {
        pb.INTEGRATION_RULE_GAUSS_LEGENDRE: "gausslegendre",
        pb.INTEGRATION_RULE_RIEMANN_LEFT: "riemann_left",
        pb.INTEGRATION_RULE_RIEMANN_RIGHT: "riemann_right",
        pb.INTEGRATION_RULE_RIEMANN_MIDDLE: "riemann_middle",
        pb.INTEGRATION_RULE_RIEMANN_TRAPEZOID: "riemann_trapezoid",
    },
    "saliency.v1.Baseline": {
        pb.BASELINE_ZEROS: "zeros",
        pb.BASELINE_BLACK: "black",
        pb.BASELINE_BLUR: "blur",
        pb.BASELINE_UNIFORM: "uniform",
        pb.BASELINE_CUSTOM: "custom",
    },
    "saliency.v1.LrpRule": {
        pb.LRP_RULE_EPSILON: "epsilon",
        pb.LRP_RULE_GAMMA: "gamma",
        pb.LRP_RULE_ALPHA1_BETA0: "alpha1_beta0",
        pb.LRP_RULE_ALPHA2_BETA1: "alpha2_beta1",
    },
    "saliency.v1.ScoreCamWeighting": {
        pb.SCORE_CAM_WEIGHTING_CHANNEL_SOFTMAX: "channel_softmax",
        pb.SCORE_CAM_WEIGHTING_CLASS_PROBABILITY: "class_probability",
    },
    "saliency.v1.AttentionHeadFusion": {
        pb.ATTENTION_HEAD_FUSION_MEAN: "mean",
        pb.ATTENTION_HEAD_FUSION_MAX: "max",
        pb.ATTENTION_HEAD_FUSION_MIN: "min",
    },
    "saliency.v1.Interpolation": {
        pb.INTERPOLATION_BILINEAR: "bilinear",
        pb.INTERPOLATION_NEAREST: "nearest",
    },
    "saliency.v1.SmoothGradAggregate": {
        pb.SMOOTH_GRAD_AGGREGATE_MEAN: "mean",
        pb.SMOOTH_GRAD_AGGREGATE_SQUARE: "square",
        pb.SMOOTH_GRAD_AGGREGATE_VARIANCE: "variance",
    },
    "saliency.v1.ReferenceSet": {
        pb.REFERENCE_SET_PHOTOS: "photos",
        pb.REFERENCE_SET_UNIFORM: "uniform",
        pb.REFERENCE_SET_BLACK_WHITE: "black_white",
        pb.REFERENCE_SET_CUSTOM: "custom",
    },
    "saliency.v1.XraiBaseline": {
        pb.XRAI_BASELINE_BLACK_WHITE: "black_white",
        pb.XRAI_BASELINE_BLACK: "black",
        pb.XRAI_BASELINE_ZEROS: "zeros",
    },
    "saliency.v1.SuperpixelBaseline": {
        pb.SUPERPIXEL_BASELINE_ZEROS: "zeros",
        pb.SUPERPIXEL_BASELINE_MEAN: "mean",
        pb.SUPERPIXEL_BASELINE_SEGMENT_MEAN: "segment_mean",
        pb.SUPERPIXEL_BASELINE_BLUR: "blur",
    },
}

# DType enum -> (name, little-endian numpy dtype). UNSPECIFIED means float32 (see the proto).
_DTYPES: dict[int, tuple[str, str]] = {
    pb.DTYPE_UNSPECIFIED: ("float32", "<f4"),
    pb.DTYPE_FLOAT32: ("float32", "<f4"),
    pb.DTYPE_FLOAT16: ("float16", "<f2"),
}
_DTYPE_VALUES = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16}
_FLOAT16_MAX = float(np.finfo(np.float16).max)

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

# A decoded map is at most the largest accepted input (validate_input_tensor: 4096 per side).
MAX_MAP_ELEMENTS = 4096 * 4096


def method_enum(name: str) -> int:
    """Registry name ("ig") -> `Method` enum value (METHOD_INTEGRATED_GRADIENTS)."""
    if name not in _METHOD_VALUES:
        raise InvalidArgument(
            f"method {name!r} has no saliency.v1 Method value; known: {', '.join(_METHOD_VALUES)}",
            "methods",
        )
    return _METHOD_VALUES[name]


def _enum_label(enum_type: Any, value: int) -> str:
    """The proto name of an enum value, or the number when this stub does not know it."""
    known = enum_type.values_by_number.get(value)
    return known.name if known is not None else str(value)


# ----------------------------------------------------------------------------------- tensors


def tensor_from_proto(t: pb.Tensor, field: str, max_elements: int) -> torch.Tensor:
    """A `Tensor` message -> a float32 torch tensor of its shape (float16 data is widened).

    Checks, each naming `field`: a known dtype (UNSPECIFIED = float32), non-negative dims,
    at most `max_elements` elements (ResourceExhausted), and exactly prod(shape) * itemsize
    bytes of data. Values are not checked for NaN here: callers that need finite values do.
    """
    if t.dtype not in _DTYPES:
        raise InvalidArgument(
            f"unknown dtype {t.dtype}; use DTYPE_FLOAT32 or DTYPE_FLOAT16", f"{field}.dtype"
        )
    _, np_dtype = _DTYPES[t.dtype]
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
        f"{len(t.data)} bytes, but shape {shape} of {_DTYPES[t.dtype][0]} needs {n * itemsize}",
    )
    array = np.frombuffer(t.data, dtype=np_dtype).reshape(shape)
    # astype copies: frombuffer's array is read-only and torch warns on those.
    return torch.from_numpy(array.astype(np.float32))


def tensor_to_proto(t: torch.Tensor, dtype: int = pb.DTYPE_FLOAT32) -> pb.Tensor:
    """Any float tensor -> a little-endian, C-order `Tensor` message of `dtype`.

    For float16, finite values beyond its range saturate at +-65504 rather than becoming Inf.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"unknown DType value {dtype}")
    _, np_dtype = _DTYPES[dtype]
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
    decoded photograph. `tensor`: already normalised model input, validated (shape, NaN);
    rgb is its de-normalisation, for overlays.
    """
    which = request.WhichOneof("input")
    if which == "image":
        rgb = decode_image(request.image, image_limits, field="image")
        return to_model_input(rgb, spec), rgb
    if which == "tensor":
        # validate_input_tensor allows up to 4096 px per side; never decode more than that.
        cap = 3 * min(image_limits.max_pixels, 4096 * 4096)
        x = validate_input_tensor(tensor_from_proto(request.tensor, "tensor", cap), spec, "tensor")
        return x, _denormalize(x, spec)
    raise InvalidArgument("set `image` (PNG/JPEG/WebP bytes) or `tensor` (model input)", "input")


def _denormalize(x: torch.Tensor, spec: ModelSpec) -> np.ndarray:
    """Normalised [3, H, W] -> uint8 [H, W, 3] pixels (clipped to the displayable range)."""
    mean = torch.tensor(spec.mean, dtype=x.dtype)[:, None, None]
    std = torch.tensor(spec.std, dtype=x.dtype)[:, None, None]
    pixels = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())


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
    x, rgb = input_from_request(request, spec, image_limits)
    targets = targets_from_proto(
        request.targets if request.HasField("targets") else None, spec.num_classes, limits.max_targets
    )
    methods = methods_from_proto(request.methods, limits, max_methods, tuple(x.shape))
    check_supported(list(methods), spec, [f"methods[{i}].method" for i in range(len(methods))])
    return x, rgb, targets, methods


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


# ----------------------------------------------------------------------------------- methods


@functools.cache
def _field_types(params_type: type) -> dict[str, Any]:
    # The params modules use `from __future__ import annotations`: resolve the strings.
    return typing.get_type_hints(params_type)


def _float32_decimal(value: float) -> float:
    """A proto `float` (float32) -> the shortest decimal that rounds to it, as a Python float.

    0.15 travels as 0.150000006; reading it back as 0.15 keeps params equal to what the client
    wrote, so defaults compare equal and cache keys (RISE mask banks) are shared.
    """
    return float(str(np.float32(value)))


def _declared_range(f: dataclasses.Field, limits: Limits) -> tuple[float | None, float | None]:
    """(minimum, maximum) of a params field from its metadata; the maximum may be a Limits key."""
    low = f.metadata.get("min")
    high = f.metadata.get("max")
    if "max_limit" in f.metadata:
        high = getattr(limits, f.metadata["max_limit"])
    return low, high


def _check_declared_bounds(f: dataclasses.Field, value: float, limits: Limits, where: str) -> None:
    """Enforce the bounds ListModels advertises (NaN fails every comparison, so it fails)."""
    low, high = _declared_range(f, limits)
    low_open, high_open = f.metadata.get("exclusive_min", False), f.metadata.get("exclusive_max", False)
    ok = True
    if low is not None:
        ok = value > low if low_open else value >= low
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise InvalidArgument(f"{value} is outside {lo}{low}, {high}{hi}", where)


def _rename(exc: SaliencyError, field: str) -> SaliencyError:
    """The same error, reported against `field` (the request path) instead of its own field."""
    message = str(exc)[len(exc.field) + 2 :] if exc.field else str(exc)
    return type(exc)(message, field)


def _params_from_message(
    name: str, message: Any | None, limits: Limits, input_shape: tuple[int, int, int], path: str
) -> Any:
    """One params message (or None: all defaults) -> the method's validated params object."""
    info = get_method(name)
    types = _field_types(info.params_type)
    fields = dataclasses.fields(info.params_type)
    values: dict[str, Any] = {}
    if message is not None:
        descriptor = message.DESCRIPTOR
        for f in fields:
            proto_field = descriptor.fields_by_name[f.name]
            where = f"{path}.{f.name}"
            if proto_field.enum_type is not None:
                value = getattr(message, f.name)
                if value == 0:  # UNSPECIFIED: the method's default
                    continue
                table = ENUM_STRINGS[proto_field.enum_type.full_name]
                if value not in table:
                    known = ", ".join(_enum_label(proto_field.enum_type, v) for v in table)
                    raise InvalidArgument(f"unknown value {value}; one of {known}", where)
                values[f.name] = table[value]
            elif proto_field.message_type is not None:  # a Tensor: the custom IG baseline
                if not message.HasField(f.name):
                    continue
                t = getattr(message, f.name)
                if "stack_limit" in f.metadata:  # a stack [N, *input] (GradientSHAP references)
                    values[f.name] = _stack_from_proto(t, getattr(limits, f.metadata["stack_limit"]), input_shape, where)
                    continue
                require(
                    list(t.shape) == list(input_shape),
                    f"{where}.shape",
                    f"shape {list(t.shape)} != the model input's {list(input_shape)}",
                )
                values[f.name] = tensor_from_proto(t, where, math.prod(input_shape))
            else:
                if not message.HasField(f.name):  # `optional` left unset: the default
                    continue
                value = getattr(message, f.name)
                if types[f.name] is float:
                    value = _float32_decimal(value)
                _check_declared_bounds(f, value, limits, where)
                values[f.name] = value
    # The custom baseline's two halves must come together. Silently ignoring a sent tensor
    # would explain against another baseline than the one the caller chose.
    if "custom_baseline" in values and values.get("baseline") != "custom":
        raise InvalidArgument("set only with baseline = BASELINE_CUSTOM", f"{path}.custom_baseline")
    if values.get("baseline") == "custom" and "custom_baseline" not in values:
        raise InvalidArgument(
            f"BASELINE_CUSTOM needs this tensor, shaped like the model input {list(input_shape)}",
            f"{path}.custom_baseline",
        )
    params = info.params_type(**values)
    try:
        params.validate(limits)
    except SaliencyError as exc:
        # validate names fields as "ig.n_steps" (or bare "reduction"): keep the leaf only.
        leaf = (exc.field or "").split(".", 1)[-1]
        raise _rename(exc, f"{path}.{leaf}" if leaf else path) from None
    return params


def _stack_from_proto(t: pb.Tensor, max_count: int, input_shape: tuple[int, int, int], where: str) -> torch.Tensor:
    """A `Tensor` holding N model inputs [N, C, H, W], 1 <= N <= max_count -> float32 tensor."""
    shape = list(t.shape)
    require(
        len(shape) == 4 and shape[1:] == list(input_shape) and 1 <= shape[0] <= max_count,
        f"{where}.shape",
        f"shape {shape} is not [N, *the model input {list(input_shape)}] with 1 <= N <= {max_count}",
    )
    return tensor_from_proto(t, where, max_count * math.prod(input_shape))


def methods_from_proto(
    requests: Sequence[pb.MethodRequest],
    limits: Limits,
    max_methods: int,
    input_shape: tuple[int, int, int],
) -> dict[str, Any]:
    """Repeated `MethodRequest` -> {registry name: validated params}, in request order.

    input_shape is the model input's [C, H, W]; a custom IG baseline must match it.
    Rejects: too many methods, UNSPECIFIED or unknown enum values, a method listed twice, a
    params message of another method's kind, and any parameter out of range.
    """
    require(
        len(requests) <= max_methods,
        "methods",
        f"{len(requests)} methods requested, at most {max_methods} allowed",
    )
    result: dict[str, Any] = {}
    first_index: dict[str, int] = {}
    method_enum_type = pb.Method.DESCRIPTOR
    for i, request in enumerate(requests):
        where = f"methods[{i}]"
        if request.method == pb.METHOD_UNSPECIFIED:
            raise InvalidArgument(
                f"METHOD_UNSPECIFIED: choose one of {', '.join(_enum_label(method_enum_type, v) for v in METHOD_NAMES)}",
                f"{where}.method",
            )
        if request.method not in METHOD_NAMES:
            raise InvalidArgument(
                f"unknown method {request.method}; known: "
                f"{', '.join(_enum_label(method_enum_type, v) for v in METHOD_NAMES)}",
                f"{where}.method",
            )
        name = METHOD_NAMES[request.method]
        if name in first_index:
            raise InvalidArgument(
                f"{_enum_label(method_enum_type, request.method)} already requested in "
                f"methods[{first_index[name]}]",
                f"{where}.method",
            )
        first_index[name] = i
        expected = PARAMS_ONEOF[name]
        given = request.WhichOneof("params")
        if given is not None and given != expected:
            raise InvalidArgument(
                f"`{given}` parameters given for {_enum_label(method_enum_type, request.method)}, "
                f"which takes `{expected}`",
                f"{where}.{given}",
            )
        message = getattr(request, expected) if given is not None else None
        result[name] = _params_from_message(name, message, limits, input_shape, f"{where}.{expected}")
    return result


def _coerce_params(name: str, value: Any) -> Any:
    """A params object, a {field: value} dict or None -> the method's params object.

    Not validated against limits: the server's limits may differ, so it is the judge.
    """
    info = get_method(name)
    if value is None:
        return info.params_type()
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(info.params_type)}
        unknown = sorted(set(value) - known)
        require(not unknown, f"{name}.params", f"unknown parameter(s) {unknown}; known: {sorted(known)}")
        return info.params_type(**value)
    require(
        isinstance(value, info.params_type),
        f"{name}.params",
        f"expected {info.params_type.__name__} or a dict, got {type(value).__name__}",
    )
    return value


def method_requests_to_proto(methods: Mapping[str, Any]) -> list[pb.MethodRequest]:
    """{registry name: params | dict | None} -> `MethodRequest`s, every field set explicitly.

    Explicit values (rather than "unset = default") keep the request meaning the same even if
    the server's defaults change. `methods_from_proto` inverts this exactly.
    """
    requests = []
    for name, value in methods.items():
        params = _coerce_params(name, value)
        request = pb.MethodRequest(method=method_enum(name))
        message = getattr(request, PARAMS_ONEOF[name])
        message.SetInParent()  # CamParams has no fields: mark the oneof set anyway
        for f in dataclasses.fields(params):
            value = getattr(params, f.name)
            proto_field = message.DESCRIPTOR.fields_by_name[f.name]
            where = f"{name}.{f.name}"
            if proto_field.enum_type is not None:
                table = {s: v for v, s in ENUM_STRINGS[proto_field.enum_type.full_name].items()}
                require(value in table, where, f"{value!r} is not one of {tuple(table)}")
                setattr(message, f.name, table[value])
            elif proto_field.message_type is not None:
                if value is not None:
                    getattr(message, f.name).CopyFrom(tensor_to_proto(value))
            else:
                try:
                    setattr(message, f.name, value)
                except (TypeError, ValueError) as exc:  # wrong type, or over int32/int64
                    raise InvalidArgument(f"{value!r} cannot be sent: {exc}", where) from None
        requests.append(request)
    return requests


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
    if options.map_dtype not in _DTYPES:
        raise InvalidArgument(f"unknown dtype {options.map_dtype}", "output.map_dtype")
    if options.normalization not in _NORMALIZATIONS:
        raise InvalidArgument(f"unknown normalization {options.normalization}", "output.normalization")
    result = OutputOptions(
        map_dtype=_DTYPES[options.map_dtype][0],
        normalization=_NORMALIZATIONS[options.normalization],
        include_overlay=options.include_overlay,
        top_predictions=options.top_predictions if options.HasField("top_predictions") else 5,
    )
    result.validate()
    return result


def output_options_to_proto(options: OutputOptions) -> pb.OutputOptions:
    options.validate()
    return pb.OutputOptions(
        map_dtype=_DTYPE_VALUES[options.map_dtype],
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
        map=tensor_to_proto(normalize_values(raw, options.normalization), _DTYPE_VALUES[options.map_dtype]),
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


def parameter_infos(params_type: type, limits: Limits) -> list[pb.ParameterInfo]:
    """One `ParameterInfo` per params dataclass field, from its type, default and metadata."""
    types = _field_types(params_type)
    infos = []
    for f in dataclasses.fields(params_type):
        kind = types[f.name]
        if "choices" in f.metadata:
            type_name = "enum"
        elif kind in (int, float):
            type_name = kind.__name__
        else:
            type_name = "tensor"
        default = None if f.default is dataclasses.MISSING else f.default
        info = pb.ParameterInfo(
            name=f.name,
            type=type_name,
            default_value="" if default is None else str(default),
            choices=list(f.metadata.get("choices", ())),
        )
        low, high = _declared_range(f, limits)
        if low is not None:
            info.minimum = float(low)
        if high is not None:
            info.maximum = float(high)
        infos.append(info)
    return infos


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
    method = METHOD_NAMES.get(message.method) or _enum_label(pb.Method.DESCRIPTOR, message.method).lower()
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


# ------------------------------------------------------------- quality, policy, sanity checks

QUALITY_METRICS: dict[int, str] = {
    pb.QUALITY_METRIC_DELETION: "deletion",
    pb.QUALITY_METRIC_INSERTION: "insertion",
    pb.QUALITY_METRIC_POINTING_GAME: "pointing_game",
    pb.QUALITY_METRIC_AGREEMENT: "agreement",
    pb.QUALITY_METRIC_CONTRAST: "contrast",
    pb.QUALITY_METRIC_COMPLETENESS: "completeness",
}
_QUALITY_METRIC_VALUES = {name: value for value, name in QUALITY_METRICS.items()}
RANDOMIZATIONS: dict[int, str] = {
    pb.RANDOMIZATION_CASCADING: "cascading",
    pb.RANDOMIZATION_INDEPENDENT: "independent",
}
_RANDOMIZATION_VALUES = {name: value for value, name in RANDOMIZATIONS.items()}
MAX_LAYER_NAME = 200


def _known_enum(value: int, table: Mapping[int, str], enum_type: Any, field: str) -> str:
    """An enum value -> its domain name, or InvalidArgument naming `field` (UNSPECIFIED too)."""
    if value not in table:
        known = ", ".join(_enum_label(enum_type, v) for v in table)
        raise InvalidArgument(f"{_enum_label(enum_type, value)} is not one of {known}", field)
    return table[value]


def _finite(value: float, field: str) -> float:
    require(math.isfinite(value), field, f"{value} is not a finite number")
    return value


def region_from_proto(
    ground_truth: pb.GroundTruth, image_size: tuple[int, int], input_size: tuple[int, int]
) -> torch.Tensor:
    """`GroundTruth` in pixels of the image sent [H0, W0] -> bool region [H, W] at the model
    input. Field names in errors: evaluate.ground_truth.box.* / .mask.*"""
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
        region = region_from_box((x_min, y_min, x_max, y_max), image_size, input_size)
    elif which == "mask":
        require(
            list(ground_truth.mask.shape) == [h0, w0],
            f"{where}.mask.shape",
            f"{list(ground_truth.mask.shape)} != the image sent [{h0}, {w0}]",
        )
        mask = tensor_from_proto(ground_truth.mask, f"{where}.mask", h0 * w0)
        require(bool(torch.isfinite(mask).all()), f"{where}.mask", "contains NaN or Inf")
        require(bool((mask != 0).any()), f"{where}.mask", "is all zero: nothing to point at")
        region = region_from_mask(mask, input_size)
    else:
        raise InvalidArgument("set `box` or `mask`", where)
    require(bool(region.any()), where, "the region is smaller than one model-input pixel")
    return region


def evaluate_from_proto(
    message: pb.EvaluateOptions, image_size: tuple[int, int], input_size: tuple[int, int]
) -> Any:
    """`EvaluateOptions` -> validated quality.evaluate.EvaluateOptions (groups not yet checked
    against the request's methods and targets: `EvaluateOptions.groups` does that)."""
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
        values["top_fraction"] = _float32_decimal(_finite(message.top_fraction, "evaluate.top_fraction"))
    if message.HasField("pointing_tolerance"):
        values["pointing_tolerance"] = message.pointing_tolerance
    if message.HasField("ground_truth"):
        values["region"] = region_from_proto(message.ground_truth, image_size, input_size)
    options = dataclasses.replace(defaults, **values)
    options.validate()
    return options


def evaluate_to_proto(options: Any, ground_truth: Any = None) -> pb.EvaluateOptions:
    """Client side: EvaluateOptions (its `region` unused) and a ground truth in pixels of the
    image sent: a box (x_min, y_min, x_max, y_max) or a mask tensor [H0, W0]."""
    message = pb.EvaluateOptions(
        metrics=[_QUALITY_METRIC_VALUES[m] for m in options.metrics],
        perturbation_steps=options.perturbation_steps,
        top_fraction=options.top_fraction,
        pointing_tolerance=options.pointing_tolerance,
    )
    if isinstance(ground_truth, torch.Tensor):
        message.ground_truth.mask.CopyFrom(tensor_to_proto(ground_truth.float()))
    elif ground_truth is not None:
        x_min, y_min, x_max, y_max = ground_truth
        message.ground_truth.box.CopyFrom(pb.Box(x_min=x_min, y_min=y_min, x_max=x_max, y_max=y_max))
    return message


def policy_from_request(request: pb.ExplainRequest) -> Any:
    """latency_budget_ms / completeness_target / explain_if -> validated PolicyOptions, or
    None when none is set."""
    from saliency.quality.policy import ExplainCondition, PolicyOptions

    budget = request.latency_budget_ms if request.HasField("latency_budget_ms") else None
    target = request.completeness_target if request.HasField("completeness_target") else None
    condition = None
    if request.HasField("explain_if"):
        c = request.explain_if
        condition = ExplainCondition(
            _float32_decimal(_finite(c.margin_below, "explain_if.margin_below")) if c.HasField("margin_below") else None,
            _float32_decimal(_finite(c.probability_below, "explain_if.probability_below"))
            if c.HasField("probability_below") else None,
        )
    if budget is None and target is None and condition is None:
        return None
    if budget is not None:
        _finite(budget, "latency_budget_ms")
    options = PolicyOptions(
        budget, None if target is None else _float32_decimal(_finite(target, "completeness_target")), condition
    )
    options.validate()
    return options


def apply_policy_to_proto(request: pb.ExplainRequest, policy: Any) -> None:
    """Client side: set the request's policy fields from PolicyOptions."""
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


def quality_score_to_proto(score: Any) -> pb.QualityScore:
    message = pb.QualityScore(
        metric=score.metric, method=method_enum(score.method), target=score.target, value=float(score.value)
    )
    if score.other_method:
        message.other_method = method_enum(score.other_method)
    if score.other_target >= 0:
        message.other_target = score.other_target
    return message


def quality_score_from_proto(message: pb.QualityScore) -> Any:
    from saliency.quality.evaluate import QualityScore

    return QualityScore(
        message.metric,
        _method_name(message.method),
        message.target,
        message.value,
        _method_name(message.other_method) if message.other_method else "",
        message.other_target if message.HasField("other_target") else -1,
    )


def _method_name(value: int) -> str:
    return METHOD_NAMES.get(value) or _enum_label(pb.Method.DESCRIPTOR, value).lower()


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


def policy_decision_from_proto(message: pb.PolicyDecision) -> Any:
    from saliency.quality.policy import MethodChoice, PolicyDecision

    return PolicyDecision(
        message.deep_maps,
        message.reason,
        [
            MethodChoice(
                _method_name(c.requested),
                _method_name(c.chosen) if c.chosen else "",
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


def sanity_request_to_proto(
    model: str,
    image: bytes | torch.Tensor,
    methods: Mapping[str, Any],
    layers: Sequence[str] = (),
    modes: Sequence[str] = (),
    target: int | None = None,
    seed: int | None = None,
) -> pb.SanityCheckRequest:
    """Client side: the inverse of sanity_request_from_proto."""
    request = pb.SanityCheckRequest(
        model=model,
        methods=method_requests_to_proto(methods),
        layers=list(layers),
        randomizations=[_RANDOMIZATION_VALUES[m] for m in modes],
    )
    if target is not None:
        request.target = target
    if seed is not None:
        request.seed = seed
    if isinstance(image, torch.Tensor):
        request.tensor.CopyFrom(tensor_to_proto(image))
    else:
        request.image = bytes(image)
    return request


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
                randomization=_RANDOMIZATION_VALUES[r.mode], layer=r.layer, method=method_enum(r.method),
                spearman_abs=s.spearman_abs, spearman_signed=s.spearman_signed, ssim=s.ssim, hog=s.hog,
            )
        )
    return response


@dataclass(frozen=True)
class SanityCheckResult:
    """What SanityCheck returned, client side. rows: quality.sanity.SimilarityRow."""

    model: str
    target: int
    layers: tuple[str, ...]
    rows: list[Any]
    weights_sha256: str


def sanity_response_from_proto(response: pb.SanityCheckResponse) -> SanityCheckResult:
    return SanityCheckResult(
        response.model, response.target, tuple(response.layers), sanity_rows_from_proto(response),
        response.weights_sha256,
    )


def sanity_rows_from_proto(response: pb.SanityCheckResponse) -> list[Any]:
    from saliency.quality.sanity import SimilarityRow

    return [
        SimilarityRow(
            RANDOMIZATIONS.get(s.randomization, str(s.randomization)), s.layer, _method_name(s.method),
            s.spearman_abs, s.spearman_signed, s.ssim, s.hog,
        )
        for s in response.similarities
    ]
