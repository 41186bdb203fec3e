"""An HTTP request as the servicer's `CallContext`, and gRPC status codes as HTTP statuses.

Errors answer `{"code": "INVALID_ARGUMENT", "message": "...", "field": "..."}` with the HTTP
status Google's API design guide gives each gRPC code, so a client of either API sees the same
code and the same message.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import NoReturn

import grpc

from saliency.api.servicer import CallAborted
from saliency.errors import InvalidArgument

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
TIMEOUT_HEADER = "x-request-timeout"  # seconds, the HTTP counterpart of a gRPC deadline
MAX_TIMEOUT_S = 3600.0


class HttpError(CallAborted):
    """An error found by the HTTP layer itself (body, media type, auth); `status` overrides the
    table where HTTP has a more exact one (413 for a body over the limit, 415, 405)."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None, status: int | None = None):
        super().__init__(code, f"{field}: {message}" if field else message, field)
        self.status = status


def http_status(error: CallAborted) -> int:
    status = getattr(error, "status", None)
    return status or HTTP_STATUS.get(error.code, 500)


def error_body(error: CallAborted) -> dict:
    return {"code": error.code.name, "message": error.message, "field": error.field or ""}


def timeout_from(headers: Mapping[str, str]) -> float | None:
    """The x-request-timeout header in seconds, validated; None when absent."""
    raw = headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidArgument(f"{raw[:32]!r} is not a number of seconds", TIMEOUT_HEADER) from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise InvalidArgument(f"{seconds:g} is outside (0, {MAX_TIMEOUT_S:g}] seconds", TIMEOUT_HEADER)
    return seconds


class HttpCall:
    """One HTTP request as a CallContext: its headers, its deadline (x-request-timeout, else
    none: the service's default_deadline_s applies), whether the client went away."""

    span_prefix = ""  # spans are named by the route, "POST /v1/models/{model}:explain"

    def __init__(self, headers: Mapping[str, str], timeout_s: float | None):
        self._headers = {k.lower(): v for k, v in headers.items()}
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.gone = False

    def metadata(self) -> Mapping[str, str]:
        return self._headers

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def cancelled(self) -> bool:
        return self.gone

    async def abort(self, code: grpc.StatusCode, message: str, field: str | None) -> NoReturn:
        raise CallAborted(code, message, field)
