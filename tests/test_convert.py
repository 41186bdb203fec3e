"""Protobuf <-> domain conversion: exact round trips, the registry and the proto in step, and
every bad value rejected with the request path of the field at fault."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from saliency import render
from saliency.attribution.limits import Limits
from saliency.attribution.registry import all_methods, get_method, make_params, methods_for
from saliency.attribution.types import Attribution, Prediction, Targets
from saliency.codec import convert, method_params, quality_codec, tensors
from saliency.codec.convert import OutputOptions
from saliency.errors import InvalidArgument, ResourceExhausted
from saliency.imaging import ImageLimits
from saliency.models import get_spec
from saliency.v1 import explainer_pb2 as pb
from saliency.wire import results

LIMITS = Limits()
SHAPE = (3, 8, 8)  # the model input [C, H, W] the methods are checked against

# A value other than the default for every field, per method (CAM methods have no fields).
NON_DEFAULT = {
    "vanilla": {"reduction": "l2"},
    "input_x_gradient": {"reduction": "max"},
    "gradcam": {},
    "gradcam_pp": {},
    "eigencam": {},
    "ig": {"n_steps": 7, "rule": "riemann_trapezoid", "baseline": "blur", "blur_sigma": 2.5, "seed": 3},
    "smoothgrad": {"n_samples": 9, "sigma": 0.2, "aggregate": "variance", "seed": 2**40, "reduction": "sum"},
    "rise": {"n_masks": 100, "grid_size": 5, "p": 0.3, "seed": 11},
    "cam": {},
    "scorecam": {"max_channels": 12, "weighting": "class_probability"},
    "occlusion": {"window": 4, "stride": 2, "baseline": -0.5},
    "gradient_shap": {"n_samples": 20, "stdev": 0.15, "reference": "custom", "seed": 2**32 - 1,
                      "custom_reference": torch.linspace(-1, 1, 2 * 3 * 8 * 8).view(2, 3, 8, 8)},
    "xrai": {"n_steps": 12, "baseline": "zeros", "area_threshold": 0.5, "min_region_area": 0.01},
    "kernel_shap": {"n_samples": 40, "n_segments": 12, "compactness": 20.5, "baseline": "blur", "blur_sigma": 3.5, "seed": 2**40},
    "lime": {"n_samples": 30, "n_segments": 7, "compactness": 0.5, "baseline": "segment_mean", "blur_sigma": 1.5, "seed": 9, "kernel_width": 0.75, "alpha": 0.0},
    "guided_backprop": {"reduction": "sum"},
    "deeplift": {"baseline": "blur", "blur_sigma": 2.5, "seed": 7},
    "lrp": {"rule": "alpha2_beta1", "epsilon": 0.125, "gamma": 1.5},
    "deconvnet": {"reduction": "l2"},
    "guided_gradcam": {"reduction": "sum", "interpolation": "nearest"},
    "attention_rollout": {"head_fusion": "max", "discard_ratio": 0.9, "layer": 3},
    "raw_attention": {"head_fusion": "min", "discard_ratio": 0.25, "layer": 0},
}


def wire(message):
    """Serialise and parse again, as gRPC would."""
    return type(message).FromString(message.SerializeToString())


def decode(requests, shape=SHAPE, limits=LIMITS, max_methods=16):
    return method_params.methods_from_proto([wire(r) for r in requests], limits, max_methods, shape)


# ------------------------------------------------------------------- registry <-> proto


API_METHODS = sorted(method_params.METHOD_NAMES.values())


def test_every_api_method_is_registered_and_has_a_params_message():
    # The registry may hold more methods than the API exposes; never fewer.
    assert set(API_METHODS) <= set(all_methods())
    assert set(method_params.PARAMS_ONEOF) == set(API_METHODS)
    known = {v.number for v in pb.Method.DESCRIPTOR.values} - {pb.METHOD_UNSPECIFIED}
    assert set(method_params.METHOD_NAMES) == known
    for value, name in method_params.METHOD_NAMES.items():
        assert method_params.method_enum(name) == value


@pytest.mark.parametrize("name", API_METHODS)
def test_params_fields_and_proto_fields_match(name):
    info = get_method(name)
    message = pb.MethodRequest.DESCRIPTOR.fields_by_name[method_params.PARAMS_ONEOF[name]].message_type
    params_fields = {f.name: f for f in dataclasses.fields(info.params_type)}
    assert set(params_fields) == set(message.fields_by_name)
    for f in params_fields.values():
        proto_field = message.fields_by_name[f.name]
        if "choices" in f.metadata:  # string fields travel as enums: every choice has a value
            table = method_params.ENUM_STRINGS[proto_field.enum_type.full_name]
            assert set(table.values()) == set(f.metadata["choices"])
            assert set(table) == {v.number for v in proto_field.enum_type.values} - {0}
        elif proto_field.message_type is None:  # scalars are `optional`: unset means default
            assert proto_field.has_presence, f.name


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", API_METHODS)
@pytest.mark.parametrize("which", ["defaults", "non-defaults"])
def test_params_round_trip_exactly(name, which):
    params = make_params(name, **(NON_DEFAULT[name] if which == "non-defaults" else {}))
    (request,) = method_params.method_requests_to_proto({name: params})
    back = decode([request])
    assert list(back) == [name]
    assert back[name] == params
    for f in dataclasses.fields(params):  # ints stay ints, floats come back as written
        assert type(getattr(back[name], f.name)) is type(getattr(params, f.name))


def test_methods_keep_request_order_and_accept_dicts_and_none():
    methods = {"rise": {"n_masks": 10}, "gradcam": None, "ig": make_params("ig", n_steps=4)}
    back = decode(method_params.method_requests_to_proto(methods))
    assert list(back) == ["rise", "gradcam", "ig"]
    assert back["rise"] == make_params("rise", n_masks=10)
    assert back["gradcam"] == make_params("gradcam")


def test_unset_params_and_unspecified_enums_mean_the_method_defaults():
    requests = [
        pb.MethodRequest(method=pb.METHOD_VANILLA),
        pb.MethodRequest(method=pb.METHOD_INPUT_X_GRADIENT, gradient=pb.GradientParams()),
        pb.MethodRequest(method=pb.METHOD_INTEGRATED_GRADIENTS, integrated_gradients=pb.IntegratedGradientsParams()),
        pb.MethodRequest(method=pb.METHOD_SMOOTHGRAD, smoothgrad=pb.SmoothGradParams(sigma=0.25)),
    ]
    back = decode(requests)
    assert back["vanilla"].reduction == "max"
    assert back["input_x_gradient"].reduction == "sum"  # UNSPECIFIED is per method
    assert back["ig"] == make_params("ig")
    assert back["smoothgrad"] == make_params("smoothgrad", sigma=0.25)  # float32 0.25, exact


def test_float32_parameters_read_back_as_the_decimal_sent():
    request = pb.MethodRequest(method=pb.METHOD_RISE, rise=pb.RiseParams(p=0.1))
    assert wire(request).rise.p != 0.1  # float32 on the wire
    assert decode([request])["rise"].p == 0.1


def test_custom_baseline_round_trip():
    baseline = torch.randn(SHAPE)
    params = make_params("ig", baseline="custom", custom_baseline=baseline)
    back = decode(method_params.method_requests_to_proto({"ig": params}))["ig"]
    assert back.baseline == "custom"
    assert torch.equal(back.custom_baseline, baseline)


@pytest.mark.parametrize("dtype", [pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16])
def test_tensor_round_trip(dtype):
    t = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 8 - 1  # exact in float16 too
    message = wire(tensors.tensor_to_proto(t, dtype))
    assert message.dtype == dtype and list(message.shape) == [2, 3, 4]
    assert len(message.data) == 24 * (2 if dtype == pb.DTYPE_FLOAT16 else 4)
    back = tensors.tensor_from_proto(message, "t", 100)
    assert back.dtype == torch.float32 and torch.equal(back, t)


def test_tensor_bytes_are_little_endian_c_order_and_unspecified_is_float32():
    array = np.array([[1.5, -2.0], [3.25, 0.0]], dtype="<f4")
    message = pb.Tensor(shape=[2, 2], data=array.tobytes())  # dtype left UNSPECIFIED
    assert torch.equal(tensors.tensor_from_proto(message, "t", 4), torch.from_numpy(array))
    assert tensors.tensor_to_proto(torch.from_numpy(array)).data == array.tobytes()


def test_float16_saturates_instead_of_overflowing_to_inf():
    t = torch.tensor([1e6, -1e6, 1.0, float("inf")])
    back = tensors.tensor_from_proto(tensors.tensor_to_proto(t, pb.DTYPE_FLOAT16), "t", 4)
    assert back.tolist() == [65504.0, -65504.0, 1.0, float("inf")]


@pytest.mark.parametrize("targets", [Targets(), Targets(top_k=3), Targets(classes=(4, 0, 9))])
def test_targets_round_trip(targets):
    assert convert.targets_from_proto(wire(convert.targets_to_proto(targets)), 10, 16) == targets


def test_unset_targets_mean_top_1():
    assert convert.targets_from_proto(None, 10, 16) == Targets(top_k=1)
    assert convert.targets_from_proto(pb.Targets(), 10, 16) == Targets(top_k=1)


def test_predictions_round_trip():
    predictions = [Prediction(285, "Egyptian cat", 9.5, 0.75), Prediction(3, "x", -1.25, 0.125)]
    messages = [wire(m) for m in convert.predictions_to_proto(predictions)]
    assert convert.predictions_from_proto(messages) == predictions


def test_output_options_round_trip_and_defaults():
    options = OutputOptions("float16", "min_max", True, 7)
    assert convert.output_options_from_proto(wire(convert.output_options_to_proto(options))) == options
    assert convert.output_options_from_proto(None) == OutputOptions()
    assert convert.output_options_from_proto(pb.OutputOptions()) == OutputOptions(top_predictions=5)


# ------------------------------------------------------------------------- attributions


def signed_map() -> torch.Tensor:
    return torch.linspace(-2.0, 6.0, 48).reshape(6, 8)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("none", lambda m: m),
        ("max_abs", lambda m: m / 6.0),
        ("min_max", lambda m: (m + 2.0) / 8.0),
    ],
)
def test_attribution_normalisation(mode, expected):
    a = Attribution("ig", 3, signed_map(), stats={"completeness_error": 0.01, "n_steps": 8.0})
    message = wire(convert.attribution_to_proto(a, OutputOptions(normalization=mode), None, True, 1.5, 20.0))
    assert message.method == pb.METHOD_INTEGRATED_GRADIENTS and message.target == 3
    assert message.overlay_png == b""  # not asked for
    back = convert.attribution_from_proto(message)
    assert back.method == "ig" and back.target == 3
    torch.testing.assert_close(back.map, expected(signed_map()))
    assert back.stats == pytest.approx({"completeness_error": 0.01, "n_steps": 8.0, "queue_ms": 1.5, "compute_ms": 20.0})


@pytest.mark.parametrize("mode", ["max_abs", "min_max"])
def test_normalising_a_constant_map_gives_zeros_not_nan(mode):
    for value in (0.0, 3.0):
        a = Attribution("gradcam", 0, torch.full((4, 4), value))
        message = convert.attribution_to_proto(a, OutputOptions(normalization=mode), None, False, 0, 0)
        back = convert.attribution_from_proto(message).map
        assert torch.isfinite(back).all()
        if mode == "min_max" or value == 0.0:
            assert not back.any()


def test_float16_maps_and_overlay_png():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    a = Attribution("gradcam", 1, signed_map().clamp(min=0))
    options = OutputOptions(map_dtype="float16", include_overlay=True)
    message = wire(convert.attribution_to_proto(a, options, rgb, False, 0.0, 1.0))
    assert message.map.dtype == pb.DTYPE_FLOAT16 and len(message.map.data) == 48 * 2
    torch.testing.assert_close(convert.attribution_from_proto(message).map, a.map, atol=1e-2, rtol=1e-3)
    picture = np.asarray(Image.open(io.BytesIO(message.overlay_png)))
    assert picture.shape == (30, 40, 3)  # drawn at the photograph's size
    assert np.array_equal(picture, render.overlay(rgb, a.map))


def test_response_and_stream_events_from_proto():
    fast = convert.attribution_to_proto(
        Attribution("vanilla", 2, signed_map().abs()), OutputOptions(include_overlay=True),
        np.zeros((6, 8, 3), np.uint8), False, 0, 3,
    )
    response = pb.ExplainResponse(
        model="tinycnn", request_id="r1", targets=[2],
        predictions=convert.predictions_to_proto([Prediction(2, "class_2", 1.0, 0.5)]),
        attributions=[fast],
    )
    result = results.explain_event_from_proto(wire(pb.ExplainEvent(prediction=response)))
    assert isinstance(result, results.ExplainResult)
    assert (result.model, result.request_id, result.targets) == ("tinycnn", "r1", (2,))
    assert [a.method for a in result.attributions] == ["vanilla"]
    assert result.overlays[("vanilla", 2)].startswith(b"\x89PNG")
    deep = convert.attribution_to_proto(Attribution("rise", 2, signed_map()), OutputOptions(), None, False, 4, 5)
    event = results.explain_event_from_proto(wire(pb.ExplainEvent(attribution=deep)))
    assert isinstance(event, results.AttributionEvent) and event.overlay_png is None
    np.testing.assert_array_equal(event.attribution.map, signed_map().numpy())
    assert event.attribution.method == "rise" and event.attribution.stats["queue_ms"] == 4


# ------------------------------------------------------------------------------- input


def test_input_from_image_bytes():
    spec = get_spec("tinycnn")
    rgb = np.random.default_rng(2).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    x, decoded = tensors.input_from_request(pb.ExplainRequest(image=render.encode_png(rgb)), spec, ImageLimits())
    assert x.shape == (3, *spec.input_size) and x.dtype == torch.float32
    assert np.array_equal(decoded, rgb)


def test_input_from_tensor_and_its_overlay_pixels():
    spec = get_spec("tinycnn")
    pixels = torch.rand(3, 32, 32)
    x = spec.normalize(pixels)
    request = pb.ExplainRequest(tensor=tensors.tensor_to_proto(x))
    got, rgb = tensors.input_from_request(wire(request), spec, ImageLimits())
    assert torch.equal(got, x)
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    assert np.abs(rgb.astype(int) - np.rint(pixels.permute(1, 2, 0).numpy() * 255)).max() <= 1


@pytest.mark.parametrize(
    ("request_", "field", "error"),
    [
        (pb.ExplainRequest(), "input", InvalidArgument),
        (pb.ExplainRequest(image=b"not an image"), "image", InvalidArgument),
        (pb.ExplainRequest(tensor=tensors.tensor_to_proto(torch.full((3, 32, 32), math.nan))), "tensor", InvalidArgument),
        (pb.ExplainRequest(tensor=tensors.tensor_to_proto(torch.zeros(32, 32))), "tensor.shape", InvalidArgument),
        (pb.ExplainRequest(tensor=pb.Tensor(shape=[3, 32, 32], data=b"\0" * 10)), "tensor.data", InvalidArgument),
        (pb.ExplainRequest(tensor=pb.Tensor(shape=[3, 10**5, 10**5])), "tensor.shape", InvalidArgument),
        (pb.ExplainRequest(tensor=tensors.tensor_to_proto(torch.zeros(3, 64, 64))), "tensor.shape", InvalidArgument),
        (pb.ExplainRequest(tensor=tensors.tensor_to_proto(torch.zeros(3, 16, 16))), "tensor.shape", InvalidArgument),
        (pb.ExplainRequest(tensor=pb.Tensor(shape=[1] * 100, data=b"\0" * 4)), "tensor.shape", InvalidArgument),
    ],
    ids=["missing", "garbage image", "nan tensor", "2-d tensor", "short data", "huge shape", "larger than the model's",
         "smaller than the model's", "100 dims"],
)
def test_bad_input_names_the_field(request_, field, error):
    with pytest.raises(error) as info:
        tensors.input_from_request(wire(request_), get_spec("tinycnn"), ImageLimits())
    assert info.value.field == field


def test_a_tensor_input_must_have_the_model_input_shape_and_the_message_says_it():
    """A raw tensor is computed at its own size, so only the model's is accepted (issue 12,
    2b): [3, 1024, 1024] float16 is 6 MB on the wire and exhausted memory under IG."""
    x = torch.zeros(3, 1024, 1024, dtype=torch.float16)
    request = pb.ExplainRequest(tensor=tensors.tensor_to_proto(x, pb.DTYPE_FLOAT16))
    with pytest.raises(InvalidArgument) as info:
        tensors.input_from_request(wire(request), get_spec("efficientnet_lite0"), ImageLimits())
    assert info.value.field == "tensor.shape"
    assert "expected [3, 224, 224]" in str(info.value) and "got [3, 1024, 1024]" in str(info.value)


def test_a_tensor_of_many_dimensions_is_refused_with_a_short_message():
    request = pb.ExplainRequest(tensor=pb.Tensor(shape=[0] * 1_000_000))  # 8 MB of dims, 0 elements
    with pytest.raises(InvalidArgument) as info:
        tensors.input_from_request(wire(request), get_spec("tinycnn"), ImageLimits())
    assert info.value.field == "tensor.shape" and len(str(info.value)) < 300


# ------------------------------------------------------------------------------ bad values


def ig(**values) -> pb.MethodRequest:
    return pb.MethodRequest(method=pb.METHOD_INTEGRATED_GRADIENTS, integrated_gradients=pb.IntegratedGradientsParams(**values))


def tensor(shape, dtype=pb.DTYPE_FLOAT32, data=None, fill=0.0) -> pb.Tensor:
    if data is None:
        data = np.full(shape, fill, dtype="<f4" if dtype != pb.DTYPE_FLOAT16 else "<f2").tobytes()
    return pb.Tensor(shape=list(shape), dtype=dtype, data=data)


GRADCAM = pb.MethodRequest(method=pb.METHOD_GRADCAM)
BAD_METHODS = {
    "unspecified method": ([pb.MethodRequest()], "methods[0].method"),
    "unknown method enum": ([GRADCAM, pb.MethodRequest(method=99)], "methods[1].method"),
    "duplicate method": ([GRADCAM, ig(), GRADCAM], "methods[2].method"),
    "params of another method": (
        [GRADCAM, pb.MethodRequest(method=pb.METHOD_INTEGRATED_GRADIENTS, rise=pb.RiseParams())],
        "methods[1].rise",
    ),
    "cam params for vanilla": ([pb.MethodRequest(method=pb.METHOD_VANILLA, cam=pb.CamParams())], "methods[0].cam"),
    "n_steps 0": ([GRADCAM, ig(n_steps=0)], "methods[1].integrated_gradients.n_steps"),
    "n_steps over the limit": ([ig(n_steps=LIMITS.max_ig_steps + 1)], "methods[0].integrated_gradients.n_steps"),
    "negative n_steps": ([ig(n_steps=-5)], "methods[0].integrated_gradients.n_steps"),
    "trapezoid with 1 step": (
        [ig(n_steps=1, rule=pb.INTEGRATION_RULE_RIEMANN_TRAPEZOID)], "methods[0].integrated_gradients.n_steps"
    ),
    "unknown rule": ([ig(rule=42)], "methods[0].integrated_gradients.rule"),
    "blur sigma 0": ([ig(blur_sigma=0.0)], "methods[0].integrated_gradients.blur_sigma"),
    "blur sigma nan": ([ig(blur_sigma=math.nan)], "methods[0].integrated_gradients.blur_sigma"),
    "negative ig seed": ([ig(seed=-1)], "methods[0].integrated_gradients.seed"),
    "custom baseline missing": (
        [ig(baseline=pb.BASELINE_CUSTOM)], "methods[0].integrated_gradients.custom_baseline"
    ),
    "custom baseline wrong shape": (
        [ig(baseline=pb.BASELINE_CUSTOM, custom_baseline=tensor((3, 4, 4)))],
        "methods[0].integrated_gradients.custom_baseline.shape",
    ),
    "custom baseline short data": (
        [ig(baseline=pb.BASELINE_CUSTOM, custom_baseline=tensor(SHAPE, data=b"\0" * 12))],
        "methods[0].integrated_gradients.custom_baseline.data",
    ),
    "custom baseline nan": (
        [ig(baseline=pb.BASELINE_CUSTOM, custom_baseline=tensor(SHAPE, fill=math.nan))],
        "methods[0].integrated_gradients.custom_baseline",
    ),
    "custom baseline bad dtype": (
        [ig(baseline=pb.BASELINE_CUSTOM, custom_baseline=tensor(SHAPE, dtype=9, data=b""))],
        "methods[0].integrated_gradients.custom_baseline.dtype",
    ),
    "custom baseline without BASELINE_CUSTOM": (
        [ig(baseline=pb.BASELINE_BLUR, custom_baseline=tensor(SHAPE))],
        "methods[0].integrated_gradients.custom_baseline",
    ),
    "negative sigma": (
        [pb.MethodRequest(method=pb.METHOD_SMOOTHGRAD, smoothgrad=pb.SmoothGradParams(sigma=-0.1))],
        "methods[0].smoothgrad.sigma",
    ),
    "smoothgrad 0 samples": (
        [pb.MethodRequest(method=pb.METHOD_SMOOTHGRAD, smoothgrad=pb.SmoothGradParams(n_samples=0))],
        "methods[0].smoothgrad.n_samples",
    ),
    "unknown aggregate": (
        [pb.MethodRequest(method=pb.METHOD_SMOOTHGRAD, smoothgrad=pb.SmoothGradParams(aggregate=8))],
        "methods[0].smoothgrad.aggregate",
    ),
    "rise p 1.5": ([pb.MethodRequest(method=pb.METHOD_RISE, rise=pb.RiseParams(p=1.5))], "methods[0].rise.p"),
    "rise p 0": ([pb.MethodRequest(method=pb.METHOD_RISE, rise=pb.RiseParams(p=0.0))], "methods[0].rise.p"),
    "rise grid 1": ([pb.MethodRequest(method=pb.METHOD_RISE, rise=pb.RiseParams(grid_size=1))], "methods[0].rise.grid_size"),
    "unknown reduction": (
        [pb.MethodRequest(method=pb.METHOD_VANILLA, gradient=pb.GradientParams(reduction=17))],
        "methods[0].gradient.reduction",
    ),
}


@pytest.mark.parametrize(("requests", "field"), BAD_METHODS.values(), ids=BAD_METHODS.keys())
def test_bad_methods_name_the_field(requests, field):
    with pytest.raises(InvalidArgument) as info:
        decode(requests)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert len(str(info.value)) > len(field) + 10  # a message a person can act on


def test_too_many_methods():
    requests = [pb.MethodRequest(method=v) for v in (1, 2, 3)]
    with pytest.raises(InvalidArgument) as info:
        decode(requests, max_methods=2)
    assert info.value.field == "methods" and "at most 2" in str(info.value)


def test_limits_come_from_configuration():
    assert decode([ig(n_steps=2000)], limits=Limits(max_ig_steps=4096))["ig"].n_steps == 2000


def test_custom_baseline_over_the_element_cap_is_a_shape_error_not_an_allocation():
    huge = pb.Tensor(shape=[3, 10**6, 10**6])
    with pytest.raises(InvalidArgument) as info:
        decode([ig(baseline=pb.BASELINE_CUSTOM, custom_baseline=huge)])
    assert info.value.field.endswith("custom_baseline.shape")


BAD_TENSORS = {
    "unknown dtype": (pb.Tensor(shape=[1], dtype=5, data=b"\0" * 4), "t.dtype", InvalidArgument),
    "negative dim": (pb.Tensor(shape=[-1, 4], data=b""), "t.shape", InvalidArgument),
    "byte count": (pb.Tensor(shape=[2, 2], data=b"\0" * 15), "t.data", InvalidArgument),
    "float16 byte count": (pb.Tensor(shape=[2, 2], dtype=pb.DTYPE_FLOAT16, data=b"\0" * 16), "t.data", InvalidArgument),
    "over the element cap": (pb.Tensor(shape=[11, 10]), "t.shape", ResourceExhausted),
    "100 dims": (pb.Tensor(shape=[1] * 100, data=b"\0" * 4), "t.shape", InvalidArgument),
    "a million dims": (pb.Tensor(shape=[0] * 1_000_000), "t.shape", InvalidArgument),
}


@pytest.mark.parametrize(("message", "field", "error"), BAD_TENSORS.values(), ids=BAD_TENSORS.keys())
def test_bad_tensors_name_the_field(message, field, error):
    with pytest.raises(error) as info:
        tensors.tensor_from_proto(wire(message), "t", 100)
    assert info.value.field == field
    assert len(str(info.value)) < 300  # an absurd shape is not echoed back in full


def test_a_tensor_of_eight_dimensions_is_still_accepted():
    t = tensors.tensor_from_proto(pb.Tensor(shape=[1] * 8, data=b"\0" * 4), "t", 100)
    assert t.shape == (1,) * 8


BAD_TARGETS = {
    "class out of range": (pb.Targets(classes=pb.ClassList(indices=[3, 10])), "targets.classes"),
    "negative class": (pb.Targets(classes=pb.ClassList(indices=[-1])), "targets.classes"),
    "duplicate class": (pb.Targets(classes=pb.ClassList(indices=[2, 2])), "targets.classes"),
    "empty class list": (pb.Targets(classes=pb.ClassList()), "targets.classes"),
    "too many classes": (pb.Targets(classes=pb.ClassList(indices=list(range(5)))), "targets.classes"),
    "top_k 0": (pb.Targets(top_k=0), "targets.top_k"),
    "negative top_k": (pb.Targets(top_k=-2), "targets.top_k"),
    "top_k over max_targets": (pb.Targets(top_k=5), "targets.top_k"),
}


@pytest.mark.parametrize(("message", "field"), BAD_TARGETS.values(), ids=BAD_TARGETS.keys())
def test_bad_targets_name_the_field(message, field):
    with pytest.raises(InvalidArgument) as info:
        convert.targets_from_proto(wire(message), num_classes=10, max_targets=4)
    assert info.value.field == field


BAD_OUTPUT = {
    "top_predictions 0": (pb.OutputOptions(top_predictions=0), "output.top_predictions"),
    "top_predictions 101": (pb.OutputOptions(top_predictions=101), "output.top_predictions"),
    "unknown dtype": (pb.OutputOptions(map_dtype=3), "output.map_dtype"),
    "unknown normalization": (pb.OutputOptions(normalization=9), "output.normalization"),
}


@pytest.mark.parametrize(("message", "field"), BAD_OUTPUT.values(), ids=BAD_OUTPUT.keys())
def test_bad_output_options_name_the_field(message, field):
    with pytest.raises(InvalidArgument) as info:
        convert.output_options_from_proto(wire(message))
    assert info.value.field == field


def test_client_side_conversion_errors_name_the_parameter():
    with pytest.raises(InvalidArgument) as info:
        method_params.method_requests_to_proto({"ig": {"steps": 3}})
    assert info.value.field == "ig.params"
    with pytest.raises(InvalidArgument) as info:
        method_params.method_requests_to_proto({"ig": {"n_steps": 2**40}})  # over int32
    assert info.value.field == "ig.n_steps"
    with pytest.raises(InvalidArgument) as info:
        method_params.method_requests_to_proto({"ig": {"rule": "simpson"}})
    assert info.value.field == "ig.rule"
    with pytest.raises(InvalidArgument) as info:
        method_params.method_requests_to_proto({"nope": None})
    assert info.value.field == "methods"
    for name in set(all_methods()) - set(API_METHODS):  # registered, but not in saliency.v1
        with pytest.raises(InvalidArgument) as info:
            method_params.method_requests_to_proto({name: None})
        assert info.value.field == "methods" and "no saliency.v1 Method" in str(info.value)


# ---------------------------------------------------------------------------- ListModels


def test_model_info_lists_every_method_with_parameters_and_limits():
    spec = get_spec("tinycnn")
    limits = Limits(max_targets=32, max_ig_steps=300, max_smoothgrad_samples=77, max_rise_masks=999)
    info = wire(convert.model_info_to_proto(spec, limits))
    assert (info.name, info.height, info.width, info.channels) == ("tinycnn", 32, 32, 3)
    assert info.num_classes == 10 and info.max_targets == 10  # capped by the class count
    assert list(info.mean) == pytest.approx(spec.mean) and list(info.std) == pytest.approx(spec.std)
    assert info.pretrained is False and info.architecture == "cnn"
    assert [m.method for m in info.methods] == sorted(v for v, n in method_params.METHOD_NAMES.items() if n in methods_for(spec))
    methods = {m.name: m for m in info.methods}
    assert set(methods) == set(methods_for(spec)) and set(API_METHODS) == set(all_methods())
    for name, m in methods.items():
        registered = get_method(name)
        assert (m.kind, m.summary) == (registered.kind, registered.summary)
        assert [p.name for p in m.parameters] == [f.name for f in dataclasses.fields(registered.params_type)]
    params = {(m.name, p.name): p for m in info.methods for p in m.parameters}
    n_steps = params["ig", "n_steps"]
    assert (n_steps.type, n_steps.default_value, n_steps.minimum, n_steps.maximum) == ("int", "50", 1, 300)
    assert params["smoothgrad", "n_samples"].maximum == 77
    assert params["rise", "n_masks"].maximum == 999
    p = params["rise", "p"]
    assert (p.type, p.default_value, p.minimum, p.maximum) == ("float", "0.5", 0, 1)
    rule = params["ig", "rule"]
    assert rule.type == "enum" and rule.default_value == "gausslegendre" and "riemann_left" in rule.choices
    assert not rule.HasField("minimum")
    assert params["ig", "custom_baseline"].type == "tensor"
    assert params["input_x_gradient", "reduction"].default_value == "sum"
    assert list(params["vanilla", "reduction"].choices) == ["max", "sum", "l2"]
    assert methods["gradcam"].parameters == []


def test_model_info_leaves_out_methods_that_cannot_explain_the_model():
    spec = dataclasses.replace(get_spec("tinycnn"), name="no_gap_head", classifier_layer="")
    listed = {m.name for m in wire(convert.model_info_to_proto(spec, Limits())).methods}
    assert "cam" not in listed and {"gradcam", "ig"} <= listed
    assert "cam" in {m.name for m in wire(convert.model_info_to_proto(get_spec("tinycnn"), Limits())).methods}


def test_a_method_that_cannot_explain_the_model_is_refused_naming_its_field():
    spec = dataclasses.replace(get_spec("tinycnn"), name="no_gap_head", classifier_layer="")
    request = pb.ExplainRequest(
        model="no_gap_head",
        tensor=tensors.tensor_to_proto(torch.zeros(3, 32, 32)),
        methods=[pb.MethodRequest(method=pb.METHOD_GRADCAM), pb.MethodRequest(method=pb.METHOD_CAM)],
    )
    with pytest.raises(InvalidArgument) as info:
        convert.request_inputs_from_proto(wire(request), spec, ImageLimits(), Limits(), 8)
    assert info.value.field == "methods[1].method"
    assert "cam cannot explain model no_gap_head: it needs a global-average-pool + linear head" in str(info.value)
    assert "gradcam" in str(info.value)  # says what it can use instead


def test_every_advertised_bound_is_enforced():
    """A value just outside any advertised [minimum, maximum] is rejected."""
    info = convert.model_info_to_proto(get_spec("tinycnn"), LIMITS)
    for m in info.methods:
        oneof = method_params.PARAMS_ONEOF[m.name]
        for p in m.parameters:
            for bound, step in (("minimum", -1), ("maximum", 1)):
                if not p.HasField(bound) or p.type != "int" or abs(getattr(p, bound)) > 2**62:
                    continue
                request = pb.MethodRequest(method=method_params.method_enum(m.name))
                setattr(getattr(request, oneof), p.name, int(getattr(p, bound)) + step)
                with pytest.raises(InvalidArgument) as raised:
                    decode([request])
                assert raised.value.field == f"methods[0].{oneof}.{p.name}"


def test_sanity_defaults_are_the_methods_that_can_explain_the_model():
    def defaults(model: str) -> set[str]:
        request = pb.SanityCheckRequest(model=model, tensor=tensors.tensor_to_proto(torch.zeros(3, 32, 32)))
        return set(quality_codec.sanity_request_from_proto(wire(request), get_spec(model), Limits(), 8, ImageLimits()).methods)

    assert defaults("tinycnn") == {"vanilla", "gradcam", "guided_backprop"}
    assert defaults("tinyvit") == {"vanilla", "gradcam"}  # guided backprop needs ReLUs
