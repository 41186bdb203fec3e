"""Bodies in and out: protobuf's JSON mapping (google.protobuf.json_format, bytes as base64) or,
negotiated by Content-Type / Accept, the binary protobuf encoding (application/x-protobuf),
which skips base64 and JSON for large maps (bench/http.py measures both).

These functions are CPU work proportional to the body: callers run them off the event loop.
"""

from __future__ import annotations

import json
import re
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from saliency.errors import InvalidArgument

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
M = TypeVar("M", bound=Message)

_FIELD_IN_PARSE_ERROR = re.compile(r"Failed to parse (\w+) field")
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)" at "([^"]+)"')


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header; JSON when absent."""
    return (content_type or JSON).split(";", 1)[0].strip().lower() or JSON


def wants_protobuf(accept: str | None) -> bool:
    """The client asked for binary protobuf (Accept names it before JSON, or alone)."""
    if not accept:
        return False
    kinds = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    return PROTOBUF in kinds and (JSON not in kinds or kinds.index(PROTOBUF) < kinds.index(JSON))


def json_object(body: bytes, field: str = "body") -> dict:
    """A JSON object from a request body; InvalidArgument naming `field` otherwise."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidArgument(f"is not valid JSON{where}: {getattr(exc, 'msg', str(exc))}", field) from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"must be a JSON object, not {type(value).__name__}", field)
    return value


def _parse_error_field(text: str, message: Message) -> str:
    """The request path a json_format.ParseError names, as the gRPC errors name fields."""
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown:
        where = unknown.group(2).split(".")[1:]  # drop the message type's own name
        return ".".join([*where, unknown.group(1)])
    names = _FIELD_IN_PARSE_ERROR.findall(text)
    return ".".join(names) or message.DESCRIPTOR.name


def message_from_dict(value: dict, message_type: type[M], field_prefix: str = "") -> M:
    """`value` in protobuf's JSON mapping (camelCase or proto names) -> a message of the type."""
    message = message_type()
    try:
        json_format.ParseDict(value, message)
    except json_format.ParseError as exc:
        text = " ".join(str(exc).split())
        field = _parse_error_field(text, message)
        raise InvalidArgument(text[:512], f"{field_prefix}{field}") from None
    return message


def parse_message(body: bytes, content_type: str | None, message_type: type[M]) -> M:
    """A request body in JSON or binary protobuf -> the message; InvalidArgument naming the field."""
    kind = media_type(content_type)
    if kind == PROTOBUF:
        try:
            return message_type.FromString(body)
        except DecodeError as exc:
            raise InvalidArgument(f"is not a serialized {message_type.DESCRIPTOR.full_name}: {exc}", "body") from None
    return message_from_dict(json_object(body), message_type)


def message_to_dict(message: Message) -> dict:
    """A message in protobuf's JSON mapping (camelCase; fields at their default left out)."""
    return json_format.MessageToDict(message)


def encode_json(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def encode_message(message: Message, protobuf: bool) -> bytes:
    return message.SerializeToString() if protobuf else encode_json(message_to_dict(message))
