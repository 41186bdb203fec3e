"""Method parameters -> `MethodRequest` messages, without the method registry (client side).

A method's parameters are given as its params dataclass (every field is sent), a
{field: value} mapping (only those fields are sent; the server's defaults fill the rest) or
None (all defaults). Each field goes to the proto field of the same name in the message of
the method's `params` oneof: strings through the enum tables, arrays as `Tensor`s. Values are
not range-checked here: the server's limits may differ from any default, so it is the judge.
The server decodes with `saliency.codec.method_params.methods_from_proto`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from saliency.errors import InvalidArgument, require
from saliency.v1 import explainer_pb2 as pb
from saliency.wire.arrays import array_to_proto
from saliency.wire.tables import ENUM_STRINGS, PARAMS_ONEOF, enum_value, method_enum


def _values(name: str, params: Any, message: Any) -> Iterator[tuple[str, Any]]:
    """(field, value) pairs to send for one method's parameters."""
    known = [f.name for f in message.DESCRIPTOR.fields]
    if params is None:
        return iter(())
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        pairs = [(f.name, getattr(params, f.name)) for f in dataclasses.fields(params)]
    elif isinstance(params, Mapping):
        pairs = list(params.items())
    else:
        raise InvalidArgument(
            f"expected a params dataclass, a dict or None, got {type(params).__name__}", f"{name}.params"
        )
    unknown = sorted(str(k) for k, _ in pairs if k not in known)
    require(not unknown, f"{name}.params", f"unknown parameter(s) {unknown}; known: {sorted(known)}")
    return iter(pairs)


def method_request_to_proto(name: str, params: Any = None) -> pb.MethodRequest:
    """One method by registry name ("ig") and its parameters -> a `MethodRequest`."""
    request = pb.MethodRequest(method=method_enum(name))
    message = getattr(request, PARAMS_ONEOF[name])
    message.SetInParent()  # CamParams has no fields: mark the oneof set anyway
    for field_name, value in _values(name, params, message):
        proto_field = message.DESCRIPTOR.fields_by_name[field_name]
        where = f"{name}.{field_name}"
        if proto_field.enum_type is not None:
            strings = ENUM_STRINGS[proto_field.enum_type.full_name]
            setattr(message, field_name, enum_value({s: v for v, s in strings.items()}, value, where))
        elif proto_field.message_type is not None:
            if value is not None:
                getattr(message, field_name).CopyFrom(array_to_proto(value))
        else:
            try:
                setattr(message, field_name, value)
            except (TypeError, ValueError) as exc:  # wrong type, or over int32/int64
                raise InvalidArgument(f"{value!r} cannot be sent: {exc}", where) from None
    return request


def method_requests_to_proto(methods: Mapping[str, Any]) -> list[pb.MethodRequest]:
    """{registry name: params dataclass | {field: value} | None}, in request order."""
    return [method_request_to_proto(name, params) for name, params in methods.items()]
