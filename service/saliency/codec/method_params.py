"""Method parameters on the wire: `MethodRequest` <-> {registry name: params dataclass}.

Holds the method tables (`Method` enum <-> registry name, and which `params` oneof member
carries each method: views of the registry; proto enum <-> params string: `ENUM_STRINGS` of
`saliency.wire.tables`, shared with the torch-free client), decodes a request's
`MethodRequest`s into validated params (server side), encodes params back (client side), and
describes each method's parameters for `ListModels`.

Method parameters are converted generically: each params dataclass field has a proto field of
the same name; `str` fields map to proto enums through `ENUM_STRINGS`, `optional` scalars
fall back to the dataclass default when unset, and enum value 0 (UNSPECIFIED) means default.
The bounds and choices that `ListModels` reports and those enforced both come from the fields'
`metadata` (`registry.check_field`), so the params classes are the single source of truth.
Errors name the request path to fix, e.g. `methods[1].integrated_gradients.n_steps`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from saliency.attribution.limits import Limits
from saliency.attribution.registry import (
    RegistryView,
    check_field,
    declared_range,
    field_types,
    get_method,
)
from saliency.codec.tensors import tensor_from_proto
from saliency.errors import InvalidArgument, SaliencyError, require
from saliency.v1 import explainer_pb2 as pb
from saliency.wire.params import method_request_to_proto
from saliency.wire.tables import ENUM_STRINGS, enum_label, method_enum, method_name  # noqa: F401 (method_name: for callers)

# ------------------------------------------------------------------------------ enum tables

# Views of the registry (each method's `register(enum=..., oneof=...)`), in enum value order;
# a method registered without an enum value is usable in-process only and is absent here.
# `method_enum` / `method_name` are the torch-free wire's: its tables are derived from the proto
# by convention and tests/test_method_registry.py checks they agree with these views.
METHOD_NAMES: Mapping[int, str] = RegistryView(
    lambda methods: dict(sorted((pb.Method.Value(m.enum), m.name) for m in methods.values() if m.enum))
)

# Which member of MethodRequest's `params` oneof carries each method's parameters.
PARAMS_ONEOF: Mapping[str, str] = RegistryView(
    lambda methods: {METHOD_NAMES[v]: methods[METHOD_NAMES[v]].oneof for v in METHOD_NAMES}
)


# --------------------------------------------------------- MethodRequest -> params (server)


def float32_decimal(value: float) -> float:
    """A proto `float` (float32) -> the shortest decimal that rounds to it, as a Python float.

    0.15 travels as 0.150000006; reading it back as 0.15 keeps params equal to what the client
    wrote, so defaults compare equal and cache keys (RISE mask banks) are shared.
    """
    return float(str(np.float32(value)))


def _rename(exc: SaliencyError, field: str) -> SaliencyError:
    """The same error, reported against `field` (the request path) instead of its own field."""
    message = str(exc)[len(exc.field) + 2 :] if exc.field else str(exc)
    return type(exc)(message, field)


def _params_from_message(
    name: str, message: Any | None, limits: Limits, input_shape: tuple[int, int, int], path: str
) -> Any:
    """One params message (or None: all defaults) -> the method's validated params object."""
    info = get_method(name)
    types = field_types(info.params_type)
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
                    known = ", ".join(enum_label(proto_field.enum_type, v) for v in table)
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
                    value = float32_decimal(value)
                values[f.name] = value
            check_field(f, values.get(f.name, f.default), types[f.name], limits, where)
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
    rules = getattr(params, "validate", None)  # the rules across fields (bounds: above)
    try:
        if rules is not None:
            rules(limits)
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
                f"METHOD_UNSPECIFIED: choose one of {', '.join(enum_label(method_enum_type, v) for v in METHOD_NAMES)}",
                f"{where}.method",
            )
        if request.method not in METHOD_NAMES:
            raise InvalidArgument(
                f"unknown method {request.method}; known: "
                f"{', '.join(enum_label(method_enum_type, v) for v in METHOD_NAMES)}",
                f"{where}.method",
            )
        name = METHOD_NAMES[request.method]
        if name in first_index:
            raise InvalidArgument(
                f"{enum_label(method_enum_type, request.method)} already requested in "
                f"methods[{first_index[name]}]",
                f"{where}.method",
            )
        first_index[name] = i
        expected = PARAMS_ONEOF[name]
        given = request.WhichOneof("params")
        if given is not None and given != expected:
            raise InvalidArgument(
                f"`{given}` parameters given for {enum_label(method_enum_type, request.method)}, "
                f"which takes `{expected}`",
                f"{where}.{given}",
            )
        message = getattr(request, expected) if given is not None else None
        result[name] = _params_from_message(name, message, limits, input_shape, f"{where}.{expected}")
    return result


# --------------------------------------------------------- params -> MethodRequest (client)


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
    the server's defaults change. `methods_from_proto` inverts this exactly. The encoding is the
    torch-free client's (`saliency.wire.params`), given the whole params object.
    """
    return [method_request_to_proto(name, _coerce_params(name, value)) for name, value in methods.items()]


# ------------------------------------------------------------------------------- ListModels


def parameter_infos(params_type: type, limits: Limits) -> list[pb.ParameterInfo]:
    """One `ParameterInfo` per params dataclass field, from its type, default and metadata."""
    types = field_types(params_type)
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
        low, high = declared_range(f, limits)
        if low is not None:
            info.minimum = float(low)
        if high is not None:
            info.maximum = float(high)
        infos.append(info)
    return infos
