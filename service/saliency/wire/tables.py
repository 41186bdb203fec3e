"""The enums of `saliency.v1` <-> the names used everywhere else ("ig", "float16", ...).

Pure data over the generated stubs: the client encodes with these tables and the server
decodes with the same values, so a method or an option has one spelling on the wire.
"""

from __future__ import annotations

from typing import Any

from saliency.errors import InvalidArgument
from saliency.v1 import explainer_pb2 as pb

# An enum value's string is its name without the enum's prefix, lower-cased
# (CHANNEL_REDUCTION_L2 -> "l2", METHOD_GRADCAM_PP -> "gradcam_pp"), except as listed here.
_NAME_EXCEPTIONS: dict[str, str] = {
    "METHOD_INTEGRATED_GRADIENTS": "ig",
    "INTEGRATION_RULE_GAUSS_LEGENDRE": "gausslegendre",  # Captum's spelling
}


def _names(enum_type: Any) -> dict[int, str]:
    """{value: string} of a proto enum in value order; value 0 (UNSPECIFIED) is left out."""
    prefix = enum_type.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return {
        v.number: _NAME_EXCEPTIONS.get(v.name, v.name.removeprefix(prefix).lower())
        for v in sorted(enum_type.values, key=lambda v: v.number)
        if v.number != 0
    }


def _values(names: dict[int, str]) -> dict[str, int]:
    """The inverse of a `_names` table."""
    return {name: value for value, name in names.items()}


# A method's parameters travel in the `params` oneof member of its name, except as listed here.
# The server declares both in each method's `register(...)` (attribution/registry.py, which
# needs torch); tests/test_method_registry.py checks these agree, so a new method that follows
# the convention needs no line here.
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

METHOD_NAMES: dict[int, str] = _names(pb.Method.DESCRIPTOR)
METHOD_VALUES = _values(METHOD_NAMES)

# Which member of MethodRequest's `params` oneof carries each method's parameters.
PARAMS_ONEOF: dict[str, str] = {name: _ONEOF_EXCEPTIONS.get(name, name) for name in METHOD_NAMES.values()}

# Proto enum (by full name) -> {value: the params field's string}, for every enum a params
# message uses. Value 0 (UNSPECIFIED) is absent on purpose: it means "the method's default",
# which may differ per method.
ENUM_STRINGS: dict[str, dict[int, str]] = {
    field.enum_type.full_name: _names(field.enum_type)
    for member in pb.MethodRequest.DESCRIPTOR.oneofs_by_name["params"].fields
    for field in member.message_type.fields
    if field.enum_type is not None
}

# DType enum -> (name, little-endian numpy dtype). UNSPECIFIED means float32 (see the proto).
DTYPES: dict[int, tuple[str, str]] = {
    pb.DTYPE_UNSPECIFIED: ("float32", "<f4"),
    pb.DTYPE_FLOAT32: ("float32", "<f4"),
    pb.DTYPE_FLOAT16: ("float16", "<f2"),
}
DTYPE_VALUES = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16}

# UNSPECIFIED decodes as the default ("none", "input"); encoding always names a value.
NORMALIZATION_VALUES = _values(_names(pb.Normalization.DESCRIPTOR))
NORMALIZATION_NAMES: dict[int, str] = {pb.NORMALIZATION_UNSPECIFIED: "none", **_names(pb.Normalization.DESCRIPTOR)}
MAP_SIZE_VALUES = _values(_names(pb.MapSize.DESCRIPTOR))
MAP_SIZE_NAMES: dict[int, str] = {pb.MAP_SIZE_UNSPECIFIED: "input", **_names(pb.MapSize.DESCRIPTOR)}

QUALITY_METRICS: dict[int, str] = _names(pb.QualityMetric.DESCRIPTOR)
QUALITY_METRIC_VALUES = _values(QUALITY_METRICS)
RANDOMIZATIONS: dict[int, str] = _names(pb.Randomization.DESCRIPTOR)
RANDOMIZATION_VALUES = _values(RANDOMIZATIONS)


def enum_label(enum_type: Any, value: int) -> str:
    """The proto name of an enum value, or the number when this stub does not know it."""
    known = enum_type.values_by_number.get(value)
    return known.name if known is not None else str(value)


def enum_value(values: dict[str, int], name: Any, field: str) -> int:
    """A name from the caller ("deletion") -> its enum value via `values` (a *_VALUES table),
    or InvalidArgument naming `field`."""
    if name not in values:
        raise InvalidArgument(f"{name!r} is not one of {', '.join(values)}", field)
    return values[name]


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
