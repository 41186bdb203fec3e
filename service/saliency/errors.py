"""Typed errors. Every error a user can cause names the field to fix.

The serving layer maps these to gRPC status codes in one place; the engine raises them and
knows nothing of gRPC.
"""

from __future__ import annotations


class SaliencyError(Exception):
    """Base class; `field` names the request field at fault, when there is one."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidArgument(SaliencyError):
    """The request is malformed or a value is out of range (gRPC INVALID_ARGUMENT)."""


class NotFound(SaliencyError):
    """A named model or method does not exist (gRPC NOT_FOUND)."""


class ResourceExhausted(SaliencyError):
    """The request is over a configured limit or a queue is full (gRPC RESOURCE_EXHAUSTED)."""


def require(condition: bool, field: str, message: str) -> None:
    """Raise InvalidArgument(message, field) unless `condition` holds."""
    if not condition:
        raise InvalidArgument(message, field)


class DeadlineExceeded(SaliencyError):
    """The request's deadline passed before its maps were ready (gRPC DEADLINE_EXCEEDED)."""


class Unavailable(SaliencyError):
    """The backend cannot serve now (gRPC UNAVAILABLE)."""


class Unimplemented(SaliencyError):
    """The serving backend lacks a feature the request asks for (gRPC UNIMPLEMENTED)."""
