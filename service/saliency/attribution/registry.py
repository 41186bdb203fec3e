"""The method registry: one entry per method, filled by `register` where the method lives.

The registry drives the CLI's method list, the API's method list and the tests'
parametrisation, so a newly registered method is covered by construction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from saliency.attribution.limits import DEFAULT_LIMITS, Limits
from saliency.errors import InvalidArgument

if TYPE_CHECKING:
    from saliency.models import ModelSpec

Kind = Literal["fast", "deep"]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    kind: Kind  # fast: from the prediction's own forward/backward; deep: sample executor
    params_type: type  # a frozen dataclass with defaults and validate(limits)
    summary: str
    signed: bool  # whether maps carry meaningful negative values
    plan: Callable[..., Any] | None = None  # deep methods: (model, x, target, params) -> DeepTask
    # (spec) -> None when the method can explain that model, else why not: a predicate over
    # what the model probe found at load (attribution/requirements.py), so ListModels, the CLI
    # and request validation give one answer.
    supports: Callable[[ModelSpec], str | None] | None = None

    def unsupported_reason(self, spec: ModelSpec) -> str | None:
        return self.supports(spec) if self.supports is not None else None


METHODS: dict[str, MethodInfo] = {}


def register(
    name: str,
    kind: Kind,
    params_type: type,
    summary: str,
    signed: bool = False,
    supports: Callable[[ModelSpec], str | None] | None = None,
):
    """Decorator for a deep method's planner; call it plainly (plan=None) for fast methods.

    `supports` (spec) -> None | reason restricts the method to the models it can explain;
    build it from `requirements.needs(...)`.
    """

    def add(plan: Callable[..., Any] | None) -> Callable[..., Any] | None:
        if name in METHODS:
            raise RuntimeError(f"method {name!r} registered twice")
        METHODS[name] = MethodInfo(name, kind, params_type, summary, signed, plan, supports)
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


def methods_for(spec: ModelSpec) -> dict[str, MethodInfo]:
    """The methods that can explain the model of `spec`, by name."""
    return {n: m for n, m in all_methods().items() if m.unsupported_reason(spec) is None}


def check_supported(names: list[str], spec: ModelSpec, fields: list[str] | None = None) -> None:
    """Raise InvalidArgument for the first method that cannot explain `spec`'s model.

    fields: the request field naming each method (default "methods").
    """
    for i, name in enumerate(names):
        reason = get_method(name).unsupported_reason(spec)
        if reason is not None:
            others = ", ".join(sorted(methods_for(spec)))
            raise InvalidArgument(
                f"{name} cannot explain model {spec.name}: {reason}; methods for {spec.name}: {others}",
                fields[i] if fields else "methods",
            )


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
        attention,
        cam,
        deeplift,
        gradient_shap,
        guided_backprop,
        integrated_gradients,
        kernel_shap,
        lime,
        lrp,
        occlusion,
        rise,
        score_cam,
        smoothgrad,
        xrai,
    )
