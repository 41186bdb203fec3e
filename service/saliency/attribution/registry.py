"""The method registry: one entry per method, filled by `register` where the method lives.

The registry drives the CLI's method list, the API's method list and the tests'
parametrisation, so a newly registered method is covered by construction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from saliency.attribution.limits import DEFAULT_LIMITS, Limits
from saliency.errors import InvalidArgument

Kind = Literal["fast", "deep"]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    kind: Kind  # fast: from the prediction's own forward/backward; deep: sample executor
    params_type: type  # a frozen dataclass with defaults and validate(limits)
    summary: str
    signed: bool  # whether maps carry meaningful negative values
    plan: Callable[..., Any] | None = None  # deep methods: (model, x, target, params) -> DeepTask


METHODS: dict[str, MethodInfo] = {}


def register(name: str, kind: Kind, params_type: type, summary: str, signed: bool = False):
    """Decorator for a deep method's planner; call it plainly (plan=None) for fast methods."""

    def add(plan: Callable[..., Any] | None) -> Callable[..., Any] | None:
        if name in METHODS:
            raise RuntimeError(f"method {name!r} registered twice")
        METHODS[name] = MethodInfo(name, kind, params_type, summary, signed, plan)
        return plan

    return add


def get_method(name: str) -> MethodInfo:
    _load_all()
    if name not in METHODS:
        raise InvalidArgument(
            f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}", "methods"
        )
    return METHODS[name]


def all_methods() -> dict[str, MethodInfo]:
    _load_all()
    return dict(METHODS)


def split_by_kind(methods: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """{name: params} -> (fast methods, deep methods), each in the given order."""
    fast = {n: p for n, p in methods.items() if get_method(n).kind == "fast"}
    return fast, {n: p for n, p in methods.items() if n not in fast}


def make_params(name: str, limits: Limits = DEFAULT_LIMITS, **values: Any) -> Any:
    """Build and validate the parameter object of method `name` from keyword values."""
    info = get_method(name)
    known = {f.name for f in dataclasses.fields(info.params_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidArgument(
            f"unknown parameter(s) {unknown} for {name}; known: {sorted(known)}", f"{name}.params"
        )
    params = info.params_type(**values)
    params.validate(limits)
    return params


def _load_all() -> None:
    # Importing the method modules runs their `register` calls.
    from saliency.attribution import fast  # noqa: F401
    from saliency.attribution.methods import (  # noqa: F401
        cam,
        guided_backprop,
        integrated_gradients,
        occlusion,
        rise,
        score_cam,
        smoothgrad,
    )
