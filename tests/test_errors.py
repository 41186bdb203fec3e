"""Every typed error carries its gRPC status, and every path that maps statuses reads it there."""

from __future__ import annotations

import grpc
import pytest

from saliency import errors
from saliency.api.servicer import status_for
from saliency.torchserve.batch import code_for, error_for

KINDS = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.SaliencyError)]


def test_every_error_class_is_listed():
    assert {c.__name__ for c in KINDS} >= {
        "SaliencyError", "InvalidArgument", "NotFound", "ResourceExhausted",
        "DeadlineExceeded", "Unavailable", "Unimplemented",
    }


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_status_is_a_grpc_code_and_servicer_uses_it(kind):
    code = grpc.StatusCode[kind.status]
    assert code != grpc.StatusCode.OK
    assert status_for(kind("x", "field")) == code


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_status_crosses_the_torchserve_boundary_as_the_same_error(kind):
    """The handler answers a row with code_for(exc); the backend raises error_for(code): the
    caller must get the status the handler meant (an UNIMPLEMENTED became INTERNAL before)."""
    back = error_for(code_for(kind("why", "field")), "field: why")
    assert type(back) is kind
    assert status_for(back) == grpc.StatusCode[kind.status]
    assert str(back) == "field: why"


def test_anything_else_is_internal_and_stays_so():
    assert status_for(RuntimeError("bug")) == grpc.StatusCode.INTERNAL
    assert code_for(RuntimeError("bug")) == grpc.StatusCode.INTERNAL.value[0]
    assert status_for(error_for(grpc.StatusCode.UNKNOWN.value[0], "?")) == grpc.StatusCode.UNKNOWN
