"""The registry is the one truth about a method: the API's tables, validation, the advertised
bounds, the policy's fallbacks and sample counts are all read from `register`, and a method
added in one file (here: two toy methods registered by this test) is listed, validated, planned
and computed through the in-process engine with nothing else edited."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pytest
import torch

from saliency.attribution import registry
from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkOutput, ChunkSizes, DeepPlan, SampleStream
from saliency.attribution.fast_inputs import FastInputs
from saliency.attribution.limits import DEFAULT_LIMITS
from saliency.attribution.registry import (
    INPUT_GRAD,
    all_methods,
    declared_range,
    example_params,
    get_method,
    make_params,
    methods_for,
    register,
)
from saliency.attribution.types import Attribution, Targets
from saliency.codec import method_params
from saliency.errors import InvalidArgument
from saliency.models import get_spec
from saliency.runtime.policy import FALLBACKS, Costs, plan_within_budget
from saliency.v1 import explainer_pb2 as pb

METHODS = sorted(all_methods())
DEEP = sorted(n for n, m in all_methods().items() if m.kind == "deep")
TEST_MODELS = ("tinycnn", "tinyvit")


def test_every_production_method_has_an_enum_value_and_every_value_a_method():
    values = {v.name for v in pb.Method.DESCRIPTOR.values if v.number != pb.METHOD_UNSPECIFIED}
    declared = {m.enum: name for name, m in all_methods().items()}
    missing = sorted(name for enum, name in declared.items() if enum is None)
    assert not missing, f"registered without a saliency.v1 Method value: {missing}"
    assert sorted(values - declared.keys()) == [], "Method values no registered method claims"
    assert len(declared) == len(all_methods()), "two methods claim one Method value"
    assert set(method_params.METHOD_NAMES.values()) == set(all_methods())


@pytest.mark.parametrize("name", METHODS)
def test_the_oneof_member_carries_every_params_field(name):
    info = get_method(name)
    oneof = pb.MethodRequest.DESCRIPTOR.oneofs_by_name["params"]
    assert info.oneof in {f.name for f in oneof.fields}, f"{name}: no oneof member {info.oneof!r}"
    message = pb.MethodRequest.DESCRIPTOR.fields_by_name[info.oneof].message_type
    for f in dataclasses.fields(info.params_type):
        assert f.name in message.fields_by_name, f"{name}.{f.name} has no field in {message.name}"
    assert method_params.PARAMS_ONEOF[name] == info.oneof
    assert method_params.method_name(method_params.method_enum(name)) == name


@pytest.mark.parametrize("name", DEEP)
def test_deep_methods_fall_back_to_a_fast_method_for_the_same_models(name):
    info = get_method(name)
    cheap = get_method(info.fallback)
    assert cheap.kind == "fast" and FALLBACKS[name] == info.fallback
    for model in TEST_MODELS:
        spec = get_spec(model)
        if info.unsupported_reason(spec) is None:
            assert cheap.unsupported_reason(spec) is None, f"{name} explains {model}, its fallback does not"


def model_for(name: str) -> str:
    for model in TEST_MODELS:
        if get_method(name).unsupported_reason(get_spec(model)) is None:
            return model
    raise AssertionError(f"{name} explains no test model")


@pytest.mark.parametrize("name", DEEP)
def test_the_sample_count_is_what_the_plan_takes(name, tiny, tiny_vit):
    """Admission and the latency budget count samples with `sample_count`; a declared count
    must be the plan's own (checked at the example and the default parameters)."""
    model = tiny if model_for(name) == "tinycnn" else tiny_vit
    info = get_method(name)
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(2))
    for params in (example_params(name), make_params(name)):
        planned = info.plan(model, x, 1, params).n_samples
        assert info.sample_count(params, model, x) == planned
        assert planned >= 1


def test_fast_methods_take_no_deep_samples():
    for name, info in all_methods().items():
        if info.kind == "fast":
            assert info.compute is not None and info.planner is None
            assert info.sample_count(make_params(name)) == 0


# ------------------------------------------------- advertised bounds are the enforced ones


def bounded_fields():
    for name in METHODS:
        info = get_method(name)
        for f in dataclasses.fields(info.params_type):
            if "choices" in f.metadata or declared_range(f, DEFAULT_LIMITS) != (None, None):
                yield pytest.param(name, f.name, id=f"{name}.{f.name}")


def advertised(name: str, field_name: str) -> pb.ParameterInfo:
    (info,) = [
        p for p in method_params.parameter_infos(get_method(name).params_type, DEFAULT_LIMITS) if p.name == field_name
    ]
    return info


def over_the_wire(name: str, field_name: str, value) -> dict:
    """Decode a MethodRequest whose params set only `field_name` = value."""
    request = pb.MethodRequest(method=method_params.method_enum(name))
    message = getattr(request, method_params.PARAMS_ONEOF[name])
    proto_field = message.DESCRIPTOR.fields_by_name[field_name]
    if proto_field.enum_type is not None:
        table = {s: v for v, s in method_params.ENUM_STRINGS[proto_field.enum_type.full_name].items()}
        setattr(message, field_name, table[value])
    else:
        setattr(message, field_name, value)
    return method_params.methods_from_proto([request], DEFAULT_LIMITS, 4, (3, 32, 32))


def refused_naming(field_path: str, build) -> None:
    with pytest.raises(InvalidArgument) as info:
        build()
    assert info.value.field == field_path, str(info.value)


def accepted_as_far_as(field_path: str, build) -> None:
    """Built, or refused by a rule across fields (occlusion's stride <= window), never by the
    field's own bounds or choices."""
    try:
        build()
    except InvalidArgument as exc:
        own = "is outside" in str(exc) or "is not one of" in str(exc)
        assert exc.field != field_path or not own, str(exc)


def just_outside(value: float, kind: type, below: bool, exclusive: bool) -> float:
    if exclusive:
        return value
    step = 1 if kind is int else max(abs(value) * 1e-3, 1e-3)
    return value - step if below else value + step


@pytest.mark.parametrize(("name", "field_name"), list(bounded_fields()))
def test_advertised_bounds_and_choices_are_enforced(name, field_name):
    info = get_method(name)
    f = {f.name: f for f in dataclasses.fields(info.params_type)}[field_name]
    kind = registry.field_types(info.params_type)[field_name]
    shown = advertised(name, field_name)
    where, wire_where = f"{name}.{field_name}", f"methods[0].{info.oneof}.{field_name}"
    if "choices" in f.metadata:
        assert list(shown.choices) == list(f.metadata["choices"]) and shown.type == "enum"
        for choice in shown.choices:
            accepted_as_far_as(where, lambda v=choice: make_params(name, **{field_name: v}))
            accepted_as_far_as(wire_where, lambda v=choice: over_the_wire(name, field_name, v))
        refused_naming(where, lambda: make_params(name, **{field_name: "no-such-choice"}))
        return
    low, high = declared_range(f, DEFAULT_LIMITS)
    # ListModels advertises doubles: a 2^63 - 1 seed bound shows as its nearest double
    assert (shown.minimum if shown.HasField("minimum") else None) == (None if low is None else float(low))
    assert (shown.maximum if shown.HasField("maximum") else None) == (None if high is None else float(high))
    cases = []
    if low is not None:
        cases.append((low, just_outside(low, kind, True, f.metadata.get("exclusive_min", False))))
    if high is not None:
        cases.append((high, just_outside(high, kind, False, f.metadata.get("exclusive_max", False))))
    for bound_value, outside_value in cases:
        bound, outside = kind(bound_value), kind(outside_value)
        if not (f.metadata.get("exclusive_min") and bound == low) and not (f.metadata.get("exclusive_max") and bound == high):
            accepted_as_far_as(where, lambda v=bound: make_params(name, **{field_name: v}))
        refused_naming(where, lambda v=outside: make_params(name, **{field_name: v}))
        if abs(outside) < 2**63:  # int64 on the wire
            refused_naming(wire_where, lambda v=outside: over_the_wire(name, field_name, v))
    refused_naming(where, lambda: make_params(name, **{field_name: "7"}))
    if kind is float:
        refused_naming(where, lambda: make_params(name, **{field_name: math.nan}))


@pytest.mark.parametrize("name", METHODS)
def test_examples_are_valid(name):
    params = example_params(name)
    assert isinstance(params, get_method(name).params_type)


def test_the_torch_free_wire_tables_agree_with_the_registry():
    tables = pytest.importorskip("saliency.wire.tables")
    assert dict(tables.METHOD_NAMES) == dict(method_params.METHOD_NAMES)
    assert dict(tables.PARAMS_ONEOF) == dict(method_params.PARAMS_ONEOF)


# ------------------------------------------------------ a new method: one file, nothing else


@dataclass(frozen=True)
class GradientPowerParams:
    power: int = field(default=2, metadata={"min": 1, "max": 4})


@dataclass(frozen=True)
class ScaledScoreParams:
    n_samples: int = field(default=4, metadata={"min": 1, "max_limit": "max_smoothgrad_samples"})


def gradient_power(params: GradientPowerParams, inputs: FastInputs) -> tuple[torch.Tensor, None]:
    """sum_c |dS/dx_c|^power: [n, H, W]."""
    return inputs.input_grad.abs().pow(params.power).sum(1), None


def plan_scaled_score(model, x: torch.Tensor, target: int, params: ScaledScoreParams) -> DeepPlan:
    """Forward-only: the target logit at x * k / n for k = 1..n; map = |x| summed over channels
    times the mean of those logits."""
    x = x.detach().float().cpu()
    scores = torch.zeros(params.n_samples)

    def scaled(start: int, stop: int) -> torch.Tensor:
        k = torch.arange(start + 1, stop + 1, dtype=torch.float32) / params.n_samples
        return k[:, None, None, None] * x

    def record(start: int, out: ChunkOutput) -> None:
        scores[start : start + len(out.logits)] = out.logits[:, target].float().cpu()

    def finish() -> Attribution:
        mean = float(scores.mean())
        return Attribution("toy_scaled_score", target, x.abs().sum(0) * mean, None, {"mean_score": mean})

    stream = SampleStream(params.n_samples, False, scaled, record, sample_shape=tuple(x.shape))
    return DeepPlan("toy_scaled_score", target, [stream], finish)


@pytest.fixture
def toy_methods():
    """Two methods registered the way a method module registers itself, removed afterwards."""
    all_methods()
    saved = dict(registry.METHODS)
    register(
        "toy_gradient_power", "fast", GradientPowerParams, "sum over channels of |dS/dx|^power",
        needs_from_pass=(INPUT_GRAD,), example={"power": 3},
    )(gradient_power)
    register(
        "toy_scaled_score", "deep", ScaledScoreParams, "|x| times the mean logit along x * k / n",
        fallback="vanilla", samples=lambda p: p.n_samples, example={"n_samples": 3},
    )(plan_scaled_score)
    try:
        yield
    finally:
        registry.METHODS.clear()
        registry.METHODS.update(saved)
        registry._version[0] += 1


def test_a_method_added_in_one_file_is_listed_validated_planned_and_computed(toy_methods, tiny, tiny_images):
    assert {"toy_gradient_power", "toy_scaled_score"} <= set(methods_for(tiny.spec))
    # its needs imply which models it supports: an input gradient, which the export-only specs lack too
    assert get_method("toy_gradient_power").unsupported_reason(tiny.spec) is None
    # no enum value: usable in-process, absent from the API's tables
    assert "toy_gradient_power" not in method_params.METHOD_NAMES.values()
    assert "toy_scaled_score" not in method_params.PARAMS_ONEOF
    # validated from its field metadata, errors naming the field
    with pytest.raises(InvalidArgument) as bad:
        make_params("toy_gradient_power", power=5)
    assert bad.value.field == "toy_gradient_power.power" and "outside [1, 4]" in str(bad.value)
    with pytest.raises(InvalidArgument) as bad:
        make_params("toy_scaled_score", n_samples=DEFAULT_LIMITS.max_smoothgrad_samples + 1)
    assert bad.value.field == "toy_scaled_score.n_samples"

    x = tiny_images[1]
    methods = {
        "toy_scaled_score": make_params("toy_scaled_score", n_samples=5),
        "toy_gradient_power": make_params("toy_gradient_power", power=3),
        "vanilla": make_params("vanilla"),
    }
    result = Engine(tiny, ChunkSizes(4, 4)).explain(x, Targets(top_k=2), methods)
    maps = {(a.method, a.target): a for a in result.attributions}
    assert [a.method for a in result.attributions] == ["toy_gradient_power"] * 2 + ["vanilla"] * 2 + ["toy_scaled_score"] * 2
    for target in result.targets:
        xg = x[None].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(tiny.module(xg)[0, target], xg)
        torch.testing.assert_close(maps["toy_gradient_power", target].map, grad[0].abs().pow(3).sum(0), rtol=1e-4, atol=1e-9)
        with torch.inference_mode():
            k = torch.arange(1, 6, dtype=torch.float32)[:, None, None, None] / 5
            mean = float(tiny.module(k * x).float()[:, target].mean())
        assert maps["toy_scaled_score", target].stats["mean_score"] == pytest.approx(mean, rel=1e-5)
        torch.testing.assert_close(maps["toy_scaled_score", target].map, x.abs().sum(0) * mean, rtol=1e-5, atol=1e-6)


def test_a_new_deep_method_has_its_fallback_and_sample_count_in_the_budget_policy(toy_methods, tiny):
    params = make_params("toy_scaled_score", n_samples=40)
    info = get_method("toy_scaled_score")
    assert info.sample_count(params) == 40 == info.plan(tiny, torch.zeros(3, 32, 32), 0, params).n_samples
    assert FALLBACKS["toy_scaled_score"] == "vanilla"
    plan = plan_within_budget(
        {"toy_scaled_score": params},
        {"toy_scaled_score": "deep"},
        {"toy_scaled_score": info.sample_count(params)},
        1,
        budget_ms=10.0,
        costs=Costs(sample_seconds=0.01, queued_samples=0, spent_seconds=0.0),
        fallback_params={"vanilla": make_params("vanilla")},
    )
    assert plan.fast_extra.keys() == {"vanilla"} and plan.deep == {}
    assert plan.decision.choices[0].chosen == "vanilla"


def test_registration_refuses_what_would_break_later():
    with pytest.raises(InvalidArgument, match="fallback"):
        register("toy_no_fallback", "deep", ScaledScoreParams, "deep without a fallback")
    with pytest.raises(InvalidArgument, match="needs_from_pass"):
        register("toy_bad_need", "fast", GradientPowerParams, "?", needs_from_pass=("logits_squared",))
    with pytest.raises(InvalidArgument, match="class-agnostic"):
        register("toy_agnostic_grad", "fast", GradientPowerParams, "?", needs_from_pass=(INPUT_GRAD,), class_agnostic=True)
    with pytest.raises(InvalidArgument, match="example"):
        register("toy_bad_example", "fast", GradientPowerParams, "?", example={"exponent": 2})
    with pytest.raises(InvalidArgument, match="together"):
        register("toy_half_wire", "fast", GradientPowerParams, "?", enum="METHOD_VANILLA")
    with pytest.raises(RuntimeError, match="registered twice"):
        register("vanilla", "fast", GradientPowerParams, "again", needs_from_pass=(INPUT_GRAD,))(gradient_power)
    assert "toy_no_fallback" not in all_methods()
