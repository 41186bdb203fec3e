"""saliency.wire, the torch-free codec: what the client encodes is what the server decodes.

The client's method tables (wire.tables) are checked against the server's (api.method_params,
the registry) for every API method, and its requests are decoded by the server's own
decoders; its results are decoded from the server's own encoders.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from saliency.attribution.limits import Limits
from saliency.attribution.registry import make_params
from saliency.attribution.types import Attribution
from saliency.codec import convert, method_params, quality_codec
from saliency.errors import InvalidArgument
from saliency.models import get_spec
from saliency.quality.evaluate import EvaluateOptions
from saliency.v1 import explainer_pb2 as pb
from saliency.wire import arrays, params, requests, results, tables
from saliency.wire.types import ExplainCondition, OutputOptions, PolicyOptions, Targets
from test_convert import API_METHODS, NON_DEFAULT, SHAPE


def wire(message):
    return type(message).FromString(message.SerializeToString())


def server_decode(requests_, shape=SHAPE):
    return method_params.methods_from_proto([wire(r) for r in requests_], Limits(), 16, shape)


def test_the_client_tables_are_the_servers():
    assert tables.METHOD_NAMES == method_params.METHOD_NAMES
    assert tables.PARAMS_ONEOF == method_params.PARAMS_ONEOF
    assert tables.ENUM_STRINGS == method_params.ENUM_STRINGS


@pytest.mark.parametrize("name", API_METHODS)
@pytest.mark.parametrize("which", ["defaults", "non-defaults"])
def test_a_params_dataclass_travels_exactly(name, which):
    sent = make_params(name, **(NON_DEFAULT[name] if which == "non-defaults" else {}))
    request = params.method_request_to_proto(name, sent)
    assert request == method_params.method_requests_to_proto({name: sent})[0]
    assert server_decode([request])[name] == sent


@pytest.mark.parametrize("name", API_METHODS)
def test_a_dict_sends_only_its_fields_and_the_server_fills_its_defaults(name):
    values = NON_DEFAULT[name]
    request = params.method_request_to_proto(name, values)
    message = getattr(request, tables.PARAMS_ONEOF[name])
    assert request.WhichOneof("params") == tables.PARAMS_ONEOF[name]
    assert {f.name for f, _ in message.ListFields()} == set(values)
    assert server_decode([request])[name] == make_params(name, **values)
    assert server_decode([params.method_request_to_proto(name, None)])[name] == make_params(name)


def test_a_custom_baseline_as_a_numpy_array():
    baseline = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    request = params.method_request_to_proto("ig", {"baseline": "custom", "custom_baseline": baseline})
    back = server_decode([request])["ig"]
    assert back.baseline == "custom" and torch.equal(back.custom_baseline, torch.from_numpy(baseline))


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("ig", {"n_stepz": 3}, "ig.params: unknown parameter(s) ['n_stepz']"),
        ("ig", {"rule": "simpson"}, "ig.rule: 'simpson' is not one of"),
        ("ig", {"n_steps": 2**40}, "ig.n_steps: "),
        ("ig", "n_steps=3", "ig.params: expected a params dataclass, a dict or None"),
        ("nope", None, "methods: method 'nope' has no saliency.v1 Method value"),
    ],
)
def test_bad_parameters_name_the_field(name, value, needle):
    with pytest.raises(InvalidArgument) as info:
        params.method_request_to_proto(name, value)
    assert str(info.value).startswith(needle), str(info.value)


def test_a_dataclass_of_another_method_is_refused():
    with pytest.raises(InvalidArgument, match="gradcam.params: unknown parameter"):
        params.method_request_to_proto("gradcam", make_params("ig"))


def test_an_explain_request_decodes_on_the_server():
    x = np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)
    policy = PolicyOptions(latency_budget_ms=250.0, completeness_target=0.1, explain_if=ExplainCondition(0.2))
    request = wire(requests.explain_request_to_proto(
        "tinycnn", x, {"gradcam": None, "ig": {"n_steps": 8}}, Targets(classes=(3, 1)),
        OutputOptions(map_dtype="float16", normalization="max_abs", top_predictions=3), "r-1",
        evaluate={"metrics": ("deletion",), "perturbation_steps": 8}, ground_truth=(1, 2, 20, 30), policy=policy,
    ))
    spec = get_spec("tinycnn")
    assert convert.targets_from_proto(request.targets, spec.num_classes, 16) == Targets(classes=(3, 1))
    assert convert.output_options_from_proto(request.output) == OutputOptions("float16", "max_abs", False, 3)
    assert server_decode(request.methods, (3, 32, 32)) == {"gradcam": make_params("gradcam"), "ig": make_params("ig", n_steps=8)}
    assert np.array_equal(arrays.array_from_proto(request.tensor, "tensor", 10**6), x)
    assert quality_codec.policy_from_request(request) == policy
    evaluate = quality_codec.evaluate_from_proto(request.evaluate, (32, 32), (32, 32))
    assert (evaluate.metrics, evaluate.perturbation_steps) == (("deletion",), 8) and evaluate.region is not None
    assert request.request_id == "r-1"


def test_evaluate_options_object_or_none():
    message = requests.evaluate_to_proto(EvaluateOptions(metrics=("insertion",), top_fraction=0.25))
    assert quality_codec.evaluate_from_proto(message, (8, 8), (8, 8)) == EvaluateOptions(("insertion",), top_fraction=0.25)
    assert quality_codec.evaluate_from_proto(requests.evaluate_to_proto(None), (8, 8), (8, 8)) == EvaluateOptions()
    with pytest.raises(InvalidArgument, match="evaluate: unknown option"):
        requests.evaluate_to_proto({"regoin": 1})
    for bad in ("8", 2**40):  # wrong type, over the proto's int32
        with pytest.raises(InvalidArgument) as info:
            requests.evaluate_to_proto({"perturbation_steps": bad})
        assert info.value.field == "evaluate.perturbation_steps", str(info.value)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: requests.evaluate_to_proto({"metrics": ("deletion", "delation")}), "evaluate.metrics[1]"),
        (lambda: requests.sanity_request_to_proto("tinycnn", b"png", {}, modes=("cascade",)), "randomizations[0]"),
    ],
    ids=["metric", "randomization"],
)
def test_an_unknown_enum_name_is_refused_naming_the_field(build, field):
    """The server's field names (quality_codec), so the client's error reads like the server's."""
    with pytest.raises(InvalidArgument) as info:
        build()
    assert info.value.field == field and "is not one of" in str(info.value), str(info.value)


def test_an_image_must_be_bytes_or_an_array():
    with pytest.raises(InvalidArgument, match="input: expected encoded image bytes"):
        requests.explain_request_to_proto("tinycnn", "cat.png", {})


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_results_carry_numpy_maps_of_the_servers_encoding(dtype):
    m = torch.linspace(-3, 5, 48).reshape(6, 8)
    a = Attribution("ig", 2, m, stats={"n_steps": 8.0})
    message = wire(convert.attribution_to_proto(a, OutputOptions(map_dtype=dtype), None, True, 1.5, 7.0))
    event = results.explain_event_from_proto(pb.ExplainEvent(attribution=message))
    got = event.attribution
    assert isinstance(got.map, np.ndarray) and got.map.dtype == np.float32 and got.map.flags.writeable
    np.testing.assert_allclose(got.map, m.numpy(), rtol=1e-3 if dtype == "float16" else 0)
    assert (got.method, got.target, got.stats) == ("ig", 2, {"n_steps": 8.0, "queue_ms": 1.5, "compute_ms": 7.0})


def test_an_unknown_method_value_keeps_its_number():
    message = pb.Attribution(method=99, target=0, map=arrays.array_to_proto(np.zeros((2, 2))))
    assert results.map_from_proto(message).method == "99"


def test_the_value_types_are_the_engines():
    from saliency.attribution import types as engine_types
    from saliency.runtime import policy

    assert engine_types.Targets is Targets and policy.PolicyOptions is PolicyOptions
    assert [f.name for f in dataclasses.fields(Targets)] == ["top_k", "classes"]


def test_the_plain_choices_are_the_protos_enum_values():
    """The value types' choices (no protobuf there) and the engine's names are the wire's."""
    from saliency.quality import evaluate, sanity
    from saliency.wire import types

    assert set(types.MAP_DTYPES) == set(tables.DTYPE_VALUES)
    assert set(types.NORMALIZATIONS) == set(tables.NORMALIZATION_VALUES)
    assert set(types.MAP_SIZES) == set(tables.MAP_SIZE_VALUES)
    assert set(evaluate.METRIC_GROUPS) == set(tables.QUALITY_METRIC_VALUES)
    assert set(sanity.MODES) == set(tables.RANDOMIZATION_VALUES)
