"""Request bodies read under a byte limit: a Content-Length over it is refused before a byte is
read, and a body sent without one (chunked) is cut off as soon as it passes the limit."""

from __future__ import annotations

import grpc
from starlette.requests import ClientDisconnect, Request

from saliency.http.calls import HttpError

# Base64 makes bytes 4/3 larger; JSON around them adds a little.
JSON_OVERHEAD = 4 / 3
JSON_SLACK_BYTES = 64 * 1024


def body_limit(max_message_bytes: int) -> int:
    """What a body may hold when the request it carries may hold max_message_bytes."""
    return int(max_message_bytes * JSON_OVERHEAD) + JSON_SLACK_BYTES


def _too_large(limit: int) -> HttpError:
    return HttpError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"over the limit of {limit} bytes (max_message_bytes, with room for base64 and JSON); send a "
        "smaller image, or binary protobuf (Content-Type: application/x-protobuf)",
        "body",
        status=413,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most `limit` bytes; HttpError 413 (RESOURCE_EXHAUSTED, field body) past it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"{declared[:32]!r} is not a length", "content-length")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise HttpError(grpc.StatusCode.CANCELLED, "the client went away while sending the body", "body") from None
    return b"".join(chunks)
