"""The enums of `saliency.v1` <-> the names used everywhere else ("ig", "float16", ...).

Pure data over the generated stubs: the client encodes with these tables and the server
decodes with the same values, so a method or an option has one spelling on the wire.
"""

from __future__ import annotations

from typing import Any

from saliency.errors import InvalidArgument
from saliency.v1 import explainer_pb2 as pb

# A method's name is its Method value's name without "METHOD_", lower-cased, and its parameters
# travel in the `params` oneof member of that name, except as listed here. The server declares
# both in each method's `register(...)` (attribution/registry.py, which needs torch);
# tests/test_method_registry.py checks these agree, so a new method that follows the convention
# needs no line here.
_NAME_EXCEPTIONS: dict[int, str] = {pb.METHOD_INTEGRATED_GRADIENTS: "ig"}
_ONEOF_EXCEPTIONS: dict[str, str] = {
    "vanilla": "gradient",
    "input_x_gradient": "gradient",
    "gradcam": "cam",
    "gradcam_pp": "cam",
    "eigencam": "cam",
    "ig": "integrated_gradients",
    "deconvnet": "guided_backprop",
    "attention_rollout": "attention",
    "raw_attention": "attention",
}

METHOD_NAMES: dict[int, str] = {
    v.number: _NAME_EXCEPTIONS.get(v.number, v.name.removeprefix("METHOD_").lower())
    for v in sorted(pb.Method.DESCRIPTOR.values, key=lambda v: v.number)
    if v.number != pb.METHOD_UNSPECIFIED
}
METHOD_VALUES = {name: value for value, name in METHOD_NAMES.items()}

# Which member of MethodRequest's `params` oneof carries each method's parameters.
PARAMS_ONEOF: dict[str, str] = {name: _ONEOF_EXCEPTIONS.get(name, name) for name in METHOD_NAMES.values()}

# Proto enum (by full name) -> {value: the params field's string}. Value 0 (UNSPECIFIED) is
# absent on purpose: it means "the method's default", which may differ per method.
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
DTYPES: dict[int, tuple[str, str]] = {
    pb.DTYPE_UNSPECIFIED: ("float32", "<f4"),
    pb.DTYPE_FLOAT32: ("float32", "<f4"),
    pb.DTYPE_FLOAT16: ("float16", "<f2"),
}
DTYPE_VALUES = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16}

NORMALIZATION_NAMES: dict[int, str] = {
    pb.NORMALIZATION_UNSPECIFIED: "none",
    pb.NORMALIZATION_NONE: "none",
    pb.NORMALIZATION_MAX_ABS: "max_abs",
    pb.NORMALIZATION_MIN_MAX: "min_max",
}
NORMALIZATION_VALUES = {
    "none": pb.NORMALIZATION_NONE,
    "max_abs": pb.NORMALIZATION_MAX_ABS,
    "min_max": pb.NORMALIZATION_MIN_MAX,
}
MAP_SIZE_NAMES: dict[int, str] = {
    pb.MAP_SIZE_UNSPECIFIED: "input",
    pb.MAP_SIZE_INPUT: "input",
    pb.MAP_SIZE_ORIGINAL: "original",
}
MAP_SIZE_VALUES = {"input": pb.MAP_SIZE_INPUT, "original": pb.MAP_SIZE_ORIGINAL}

QUALITY_METRICS: dict[int, str] = {
    pb.QUALITY_METRIC_DELETION: "deletion",
    pb.QUALITY_METRIC_INSERTION: "insertion",
    pb.QUALITY_METRIC_POINTING_GAME: "pointing_game",
    pb.QUALITY_METRIC_AGREEMENT: "agreement",
    pb.QUALITY_METRIC_CONTRAST: "contrast",
    pb.QUALITY_METRIC_COMPLETENESS: "completeness",
}
QUALITY_METRIC_VALUES = {name: value for value, name in QUALITY_METRICS.items()}
RANDOMIZATIONS: dict[int, str] = {
    pb.RANDOMIZATION_CASCADING: "cascading",
    pb.RANDOMIZATION_INDEPENDENT: "independent",
}
RANDOMIZATION_VALUES = {name: value for value, name in RANDOMIZATIONS.items()}


def enum_label(enum_type: Any, value: int) -> str:
    """The proto name of an enum value, or the number when this stub does not know it."""
    known = enum_type.values_by_number.get(value)
    return known.name if known is not None else str(value)


def method_enum(name: str) -> int:
    """Registry name ("ig") -> `Method` enum value (METHOD_INTEGRATED_GRADIENTS)."""
    if name not in METHOD_VALUES:
        raise InvalidArgument(
            f"method {name!r} has no saliency.v1 Method value; known: {', '.join(METHOD_VALUES)}",
            "methods",
        )
    return METHOD_VALUES[name]


def method_name(value: int) -> str:
    """`Method` enum value -> registry name; one this stub does not know keeps its enum name,
    lower-cased, rather than failing a whole response."""
    return METHOD_NAMES.get(value) or enum_label(pb.Method.DESCRIPTOR, value).lower()
