"""Typed errors. Every error a user can cause names the field to fix.

Each class names its gRPC status code (`status`, the canonical code's name): the servicer, the
HTTP front end and the TorchServe handler all read it there, and `from_status` turns a status
that crossed a process boundary back into the error. The engine raises these and imports no
gRPC.
"""

from __future__ import annotations


class SaliencyError(Exception):
    """Base class; `field` names the request field at fault, when there is one."""

    status = "INTERNAL"  # each subclass names its own

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidArgument(SaliencyError):
    """The request is malformed or a value is out of range."""

    status = "INVALID_ARGUMENT"


class NotFound(SaliencyError):
    """A named model or method does not exist."""

    status = "NOT_FOUND"


class ResourceExhausted(SaliencyError):
    """The request is over a configured limit or a queue is full."""

    status = "RESOURCE_EXHAUSTED"


def require(condition: bool, field: str, message: str) -> None:
    """Raise InvalidArgument(message, field) unless `condition` holds."""
    if not condition:
        raise InvalidArgument(message, field)


class DeadlineExceeded(SaliencyError):
    """The request's deadline passed before its maps were ready."""

    status = "DEADLINE_EXCEEDED"


class Unavailable(SaliencyError):
    """The backend cannot serve now."""

    status = "UNAVAILABLE"


class Unimplemented(SaliencyError):
    """The serving backend lacks a feature the request asks for."""

    status = "UNIMPLEMENTED"


def status_of(exc: BaseException) -> str:
    """The gRPC status code name for an error (INTERNAL for anything not a SaliencyError)."""
    return exc.status if isinstance(exc, SaliencyError) else SaliencyError.status


def from_status(status: str, message: str) -> SaliencyError:
    """The error a status name stands for (a reply that crossed a process boundary)."""
    kinds = (InvalidArgument, NotFound, ResourceExhausted, DeadlineExceeded, Unavailable, Unimplemented)
    kind = next((k for k in kinds if k.status == status), SaliencyError)
    error = kind(message)
    error.status = status  # a status no subclass names (INTERNAL, UNKNOWN) is kept as sent
    return error
