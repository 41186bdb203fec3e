"""The method registry: everything about a method in one `register` call, where the method lives.

A method is one module under `attribution/methods/` (found by listing the package, so adding
one edits no list). Its `register` call states the name, the kind, the params class, the wire
names (the `saliency.v1.Method` enum value and the `MethodRequest.params` oneof member), the
fallback and sample count the latency-budget policy and admission use, which models it can
explain, small example parameters for tests, and its body: a planner (deep methods) or a pure
compute function over what the fast pass captured (fast methods, which also declare what they
need from the pass). The API's method tables, the policy's fallbacks, validation and the tests'
parametrisation are all read from here. The contract for a new method: docs/engine.md,
"Adding a method".

Validation is generated from the params dataclass's field metadata — `min` / `max` (or
`max_limit`, the name of a `Limits` field), `exclusive_min` / `exclusive_max`, `choices` —
the same metadata ListModels advertises, so the two cannot disagree; a params class keeps a
`validate(limits)` only for rules across fields.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import numbers
import pkgutil
import threading
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from saliency.attribution.executor import DeepTask
from saliency.attribution.limits import DEFAULT_LIMITS, Limits
from saliency.attribution.requirements import (
    ATTENTION,
    CAM_LAYER,
    INPUT_GRADIENT,
    Requirement,
    needs,
)
from saliency.errors import InvalidArgument, require

if TYPE_CHECKING:
    from saliency.attribution.executor import DeepPlan  # noqa: F401 (annotations)
    from saliency.attribution.fast_inputs import FastInputs
    from saliency.models import LoadedModel, ModelSpec

Kind = Literal["fast", "deep"]

# What a fast method can ask of the prediction's pass (attribution/fast_inputs.py).
INPUT_GRAD = "input_gradient"  # dS_c/dx for each target
CAM_ACTS = "cam_activations"  # the CAM layer's activations
CAM_GRAD = "cam_gradient"  # dS_c/dA at the CAM layer, for each target (implies CAM_ACTS)
ATTENTION_PROBS = "attention"  # every attention layer's probabilities
PASS_NEEDS = (INPUT_GRAD, CAM_ACTS, CAM_GRAD, ATTENTION_PROBS)
# What a model must offer for a fast method that declares no `supports` of its own.
_NEED_SUPPORT: dict[str, Requirement] = {
    INPUT_GRAD: INPUT_GRADIENT,
    CAM_ACTS: CAM_LAYER,
    CAM_GRAD: CAM_LAYER,
    ATTENTION_PROBS: ATTENTION,
}

# (params, inputs) -> (map [n, H, W], raw [n, ...] or None), one row per image of `inputs`.
Compute = Callable[[Any, "FastInputs"], tuple[torch.Tensor, torch.Tensor | None]]
# (model, x [C, H, W], target, params) -> what the chunk executor runs for one map.
Planner = Callable[..., "DeepPlan"]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    kind: Kind  # fast: from the prediction's own forward/backward; deep: sample executor
    params_type: type  # a frozen dataclass with defaults; bounds and choices in field metadata
    summary: str
    signed: bool  # whether maps carry meaningful negative values
    planner: Planner | None = None  # deep methods
    # (spec) -> None when the method can explain that model, else why not: a predicate over
    # what the model probe found at load (attribution/requirements.py), so ListModels, the CLI
    # and request validation give one answer.
    supports: Callable[[ModelSpec], str | None] | None = None
    enum: str | None = None  # saliency.v1.Method value name; None: usable in-process only
    oneof: str | None = None  # the MethodRequest.params member carrying the params
    fallback: str | None = None  # deep methods: the fast method served when the budget is short
    # (params) -> model calls one target's map takes; None: plan it and count (planning is cheap)
    samples: Callable[[Any], int] | None = None
    example: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # small params for tests
    # fast methods
    compute: Compute | None = None
    needs: frozenset[str] = frozenset()  # of PASS_NEEDS
    class_agnostic: bool = False  # one map per image, the same for every target
    check: Callable[[LoadedModel, Any], None] | None = None  # raises before the forward

    def plan(self, model: LoadedModel, x: torch.Tensor, target: int, params: Any, **extras: Any) -> DeepTask:
        """A fresh task (the executor's job record) for this method's plan of one map; `extras`
        go to the planner (e.g. a segmentation cache)."""
        if self.planner is None:
            raise TypeError(f"{self.name} is a fast method: it has no plan")
        return DeepTask(self.planner(model, x, target, params, **extras))

    def unsupported_reason(self, spec: ModelSpec) -> str | None:
        return self.supports(spec) if self.supports is not None else None

    def sample_count(
        self, params: Any, model: LoadedModel | None = None, x: torch.Tensor | None = None,
        task: DeepTask | None = None,
    ) -> int:
        """Model calls one target's map takes at most (0 for fast methods): the declared count,
        else `task`'s, else that of a plan for `x` (a blank input of the model's size if None)."""
        if self.kind == "fast":
            return 0
        if self.samples is not None:
            return int(self.samples(params))
        if task is None:
            blank = x if x is not None else torch.zeros(3, *model.spec.input_size)
            task = self.plan(model, blank, 0, params)
        return task.n_samples


METHODS: dict[str, MethodInfo] = {}
_version = [0]  # bumped by every registration, so derived views know when to rebuild


def register(
    name: str,
    kind: Kind,
    params_type: type,
    summary: str,
    *,
    signed: bool = False,
    supports: Callable[[ModelSpec], str | None] | None = None,
    enum: str | None = None,
    oneof: str | None = None,
    fallback: str | None = None,
    samples: Callable[[Any], int] | None = None,
    example: Mapping[str, Any] | None = None,
    needs_from_pass: tuple[str, ...] | frozenset[str] = (),
    class_agnostic: bool = False,
    check: Callable[[LoadedModel, Any], None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a method's body: its planner (deep) or its compute function (fast).

    `supports` (spec) -> None | reason restricts the method to the models it can explain (build
    it from `requirements.needs(...)`); a fast method without one gets what `needs_from_pass`
    implies. `enum` and `oneof` put the method on the wire (both or neither). Deep methods name
    a fast `fallback`. See docs/engine.md, "Adding a method".
    """
    require(kind in ("fast", "deep"), f"{name}.kind", f"{kind!r} is not fast or deep")
    require(dataclasses.is_dataclass(params_type), f"{name}.params_type", "must be a dataclass")
    require((enum is None) == (oneof is None), f"{name}.enum", "give the enum value and the oneof member together")
    known = {f.name for f in dataclasses.fields(params_type)}
    unknown = sorted(set(example or {}) - known)
    require(not unknown, f"{name}.example", f"unknown parameter(s) {unknown}; known: {sorted(known)}")
    needs_set = frozenset(needs_from_pass)
    if kind == "deep":
        require(bool(fallback), f"{name}.fallback", "a deep method names the fast method served when its budget is short")
        require(not needs_set and not class_agnostic and check is None, f"{name}.needs_from_pass", "only for fast methods")
    else:
        require(fallback is None and samples is None, f"{name}.fallback", "only for deep methods")
        bad = sorted(needs_set - set(PASS_NEEDS))
        require(not bad, f"{name}.needs_from_pass", f"{bad} not among {PASS_NEEDS}")
        require(
            not (class_agnostic and needs_set & {INPUT_GRAD, CAM_GRAD}),
            f"{name}.class_agnostic",
            "a gradient is taken for a target: a class-agnostic method cannot need one",
        )
        if supports is None and needs_set:
            supports = needs(*(_NEED_SUPPORT[n] for n in PASS_NEEDS if n in needs_set))

    def add(body: Callable[..., Any]) -> Callable[..., Any]:
        if name in METHODS:
            raise RuntimeError(f"method {name!r} registered twice")
        METHODS[name] = MethodInfo(
            name, kind, params_type, summary, signed,
            planner=body if kind == "deep" else None,
            supports=supports, enum=enum, oneof=oneof, fallback=fallback, samples=samples,
            example=dict(example or {}),
            compute=body if kind == "fast" else None,
            needs=needs_set, class_agnostic=class_agnostic, check=check,
        )
        _version[0] += 1
        return body

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


def plan_deep(model: LoadedModel, x: torch.Tensor, items: Iterable[tuple[str, Any, int]]) -> list[DeepTask]:
    """One DeepTask per (deep method, validated params, target), in order: what every driver of
    the chunk executor (the in-process engine, the embedded deep worker, the TorchServe deep
    handler) submits. x [C, H, W] normalised."""
    return [get_method(name).plan(model, x, target, params) for name, params, target in items]


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
    validate_params(name, params, limits)
    return params


def example_params(name: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The method's registered example parameters, validated: small, quick to compute."""
    return make_params(name, limits, **get_method(name).example)


# --------------------------------------------------------------- validation from metadata


@functools.cache
def field_types(params_type: type) -> dict[str, Any]:
    """Field name -> its type (the params modules use `from __future__ import annotations`)."""
    return typing.get_type_hints(params_type)


def declared_range(f: dataclasses.Field, limits: Limits) -> tuple[float | None, float | None]:
    """(minimum, maximum) of a params field from its metadata; `max_limit` names a Limits field."""
    low = f.metadata.get("min")
    high = f.metadata.get("max")
    if "max_limit" in f.metadata:
        high = getattr(limits, f.metadata["max_limit"])
    return low, high


def _number(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def check_field(f: dataclasses.Field, value: Any, kind: Any, limits: Limits, where: str) -> None:
    """Enforce one field's declared choices and bounds (what ListModels advertises); NaN fails
    every comparison, so it is refused. Raises InvalidArgument naming `where`."""
    if "choices" in f.metadata:
        choices = tuple(f.metadata["choices"])
        require(value in choices, where, f"{value!r} is not one of {', '.join(choices)}")
        return
    low, high = declared_range(f, limits)
    if low is None and high is None:
        return
    wanted = numbers.Integral if kind is int else numbers.Real
    require(
        isinstance(value, wanted) and not isinstance(value, bool),
        where,
        f"{value!r} is not {'an integer' if kind is int else 'a number'}",
    )
    low_open, high_open = f.metadata.get("exclusive_min", False), f.metadata.get("exclusive_max", False)
    ok = True
    if low is not None:
        ok = value > low if low_open else value >= low
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        note = f" ({f.metadata['note']})" if "note" in f.metadata else ""
        low_text = "-inf" if low is None else _number(low)
        high_text = "inf" if high is None else _number(high)
        raise InvalidArgument(f"{value} is outside {lo}{low_text}, {high_text}{hi}{note}", where)


def validate_params(name: str, params: Any, limits: Limits = DEFAULT_LIMITS) -> None:
    """Every field's declared bounds and choices, then the class's own rules across fields
    (`validate(limits)`, if it has one). Errors name "<method>.<field>"."""
    info = get_method(name)
    types = field_types(info.params_type)
    for f in dataclasses.fields(info.params_type):
        check_field(f, getattr(params, f.name), types[f.name], limits, f"{name}.{f.name}")
    rules = getattr(params, "validate", None)
    if rules is not None:
        rules(limits)


# ------------------------------------------------------------------------- derived views


class RegistryView(Mapping):
    """A read-only mapping computed from the registry, rebuilt when a method is registered."""

    def __init__(self, build: Callable[[dict[str, MethodInfo]], dict]):
        self._build = build
        self._cache: tuple[int, dict] | None = None

    def _table(self) -> dict:
        _load_all()
        if self._cache is None or self._cache[0] != _version[0]:
            self._cache = (_version[0], self._build(dict(METHODS)))
        return self._cache[1]

    def __getitem__(self, key: Any) -> Any:
        return self._table()[key]

    def __iter__(self) -> Iterator:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(self._table())


_loaded = threading.Event()
_loading = threading.RLock()


def _load_all() -> None:
    """Import every module of `attribution.methods`: their `register` calls fill METHODS."""
    if _loaded.is_set():
        return
    with _loading:  # re-entered by the same thread only from a method module's own imports
        from saliency.attribution import methods

        for module in pkgutil.iter_modules(methods.__path__):
            importlib.import_module(f"{methods.__name__}.{module.name}")
        _loaded.set()
