"""Vertex AI-shaped explain over real uvicorn: the request body of Vertex's documentation for an
image model, unchanged but for the URL, answered in Vertex's response shape (the cat, class 285,
on efficientnet_lite0); the field mapping, what is refused and why; the visualizations; the order of
a unary answer's maps and of predictions against top-k targets."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
import torch
from opentelemetry import trace
from PIL import Image

from saliency.api.servicer import ExplainerServicer
from saliency.attribution.fast import FastResult, _top_predictions
from saliency.attribution.types import Attribution, Targets
from saliency.http import codec, vertex, visualize
from saliency.models import get_spec
from saliency.runtime.backend import DeepEvent, FastEvent
from saliency.runtime.config import load_config
from saliency.runtime.metrics import Metrics
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, chelsea_png, method, png_bytes, with_config

EFFNET, TINY = "efficientnet_lite0", "tinycnn"
CAT = 285


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=(EFFNET, TINY)))
    yield running
    running.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def vertex_url(service, endpoint: str, verb: str = "explain") -> str:
    return f"{service.http_url}/v1/projects/my-project/locations/us-central1/endpoints/{endpoint}:{verb}"


def documented_body(image: bytes, steps: int) -> dict:
    """Vertex's request for an image model with an explanation override (getting-explanations):
    instances keyed by the model's input, the attribution method's step count, top-k outputs, and
    the visualization of the input's metadata."""
    return {
        "instances": [{"image_bytes": {"b64": b64(image)}}],
        "explanationSpecOverride": {
            "parameters": {"integratedGradientsAttribution": {"stepCount": steps}, "topK": 1},
            "metadata": {"inputs": {"image_bytes": {"visualization": {
                "type": "PIXELS", "polarity": "POSITIVE", "clipPercentUpperbound": 99.9,
                "clipPercentLowerbound": 70, "overlayType": "GRAYSCALE",
            }}}},
        },
    }


def test_a_documented_vertex_body_is_answered_in_vertex_shape(service):
    cat = chelsea_png()
    answer = httpx.post(vertex_url(service, EFFNET), json=documented_body(cat, 16), timeout=300)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["deployedModelId"] == EFFNET
    (prediction,) = out["predictions"]
    assert prediction["ids"][0] == CAT and 0 < prediction["confidences"][0] <= 1
    (explanation,) = out["explanations"]
    (attribution,) = explanation["attributions"]
    assert attribution["outputIndex"] == [CAT]
    assert attribution["outputDisplayName"] == prediction["displayNames"][0]
    assert attribution["outputName"] == "logits"
    for field in ("baselineOutputValue", "instanceOutputValue", "approximationError", "featureAttributions"):
        assert field in attribution, field
    image = attribution["featureAttributions"]["image_bytes"]
    picture = Image.open(io.BytesIO(base64.b64decode(image["b64_jpeg"])))
    assert picture.format == "JPEG" and picture.size == (451, 300)  # the photograph's size
    values = np.frombuffer(base64.b64decode(image["b64_float32"]), dtype="<f4").reshape(image["shape"])
    assert values.shape == (224, 224) and np.isfinite(values).all()

    # The same call through the native API and gRPC gives the same map and the same numbers.
    request = pb.ExplainRequest(model=EFFNET, image=cat, methods=[
        pb.MethodRequest(method=pb.METHOD_INTEGRATED_GRADIENTS,
                         integrated_gradients=pb.IntegratedGradientsParams(n_steps=16))])
    (native,) = service.stub().Explain(request, timeout=300).attributions
    assert np.frombuffer(native.map.data, dtype=np.float32).tobytes() == values.tobytes()
    assert attribution["approximationError"] == pytest.approx(native.stats["completeness_error"])
    # Completeness: the map sums to the output's change from the baseline, up to that error.
    gap = attribution["instanceOutputValue"] - attribution["baselineOutputValue"]
    assert abs(float(values.sum(dtype=np.float64)) - gap) == pytest.approx(
        attribution["approximationError"] * abs(gap), rel=1e-3, abs=1e-4)


def test_the_short_alias_top_k_output_indices_xrai_and_predict(service):
    image = b64(png_bytes(np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8)))
    short = f"{service.http_url}/v1/endpoints/{TINY}:explain"
    top = httpx.post(short, json={"instances": [{"b64": image}], "explanationSpecOverride": {
        "parameters": {"integratedGradientsAttribution": {"stepCount": 4}, "topK": 2}}}, timeout=60)
    assert top.status_code == 200, top.text
    ids = top.json()["predictions"][0]["ids"]
    attributions = top.json()["explanations"][0]["attributions"]
    # The two best classes, best first: deep maps finishing in one chunk arrived in no set order
    # until the unary answer sorted them (api/servicer.py in_listed_order).
    assert [a["outputIndex"] for a in attributions] == [[ids[0]], [ids[1]]]
    assert set(attributions[0]["featureAttributions"]) == {"image"}  # {"b64": ...} has no input name

    chosen = httpx.post(short, json={"instances": [image, image], "parameters": {"maxPredictions": 1},
                                     "explanationSpecOverride": {
        "parameters": {"xraiAttribution": {"stepCount": 2}, "outputIndices": [[7], [3]]}}}, timeout=120)
    assert chosen.status_code == 200, chosen.text
    for explanation in chosen.json()["explanations"]:
        assert [a["outputIndex"] for a in explanation["attributions"]] == [[7], [3]]
        assert all("approximationError" in a for a in explanation["attributions"])
        # Named by the model's labels, also when the class is not among the predictions.
        assert [a["outputDisplayName"] for a in explanation["attributions"]] == ["class_7", "class_3"]

    predicted = httpx.post(vertex_url(service, TINY, "predict"), json={
        "instances": [{"image_bytes": {"b64": image}}], "parameters": {"maxPredictions": 3,
                                                                         "confidenceThreshold": 0.0}}, timeout=60)
    assert predicted.status_code == 200 and "explanations" not in predicted.json()
    assert len(predicted.json()["predictions"][0]["ids"]) == 3


class _Call:
    """A CallContext without a transport: no deadline, never cancelled."""

    span_prefix = "test/"

    def metadata(self):
        return {}

    def time_remaining(self):
        return None

    def cancelled(self):
        return False

    async def abort(self, code, message, field):
        raise AssertionError(f"{code}: {message} ({field})")


def test_a_unary_answer_lists_deep_maps_in_request_and_target_order():
    """Deep maps reach the core as they complete (several finishing in one chunk come in no set
    order, and cached ones first): the unary answer lists them method by method in request
    order, each method's targets in target order, after the fast maps; a policy's fallback map
    stays right after the fast maps."""
    spec = get_spec(TINY)
    targets = (4, 1, 0)
    blank = torch.zeros(spec.input_size)

    class Scrambled:  # a backend whose deep maps complete in an order of their own
        name = "embedded"
        models = {TINY: spec}

        async def explain(self, job, timeout):
            logits = torch.zeros(spec.num_classes)
            fast = [Attribution("vanilla", t, blank) for t in targets]
            yield FastEvent(FastResult(logits, [], targets, fast), 0.0)
            yield DeepEvent(Attribution("gradcam", 4, blank), 0.0, 0.0)  # a fallback, not requested
            for name, target in [("rise", 0), ("ig", 1), ("rise", 4), ("ig", 0), ("rise", 1), ("ig", 4)]:
                yield DeepEvent(Attribution(name, target, blank), 0.0, 0.0)

    servicer = ExplainerServicer(Scrambled(), load_config(env={}), Metrics(), trace.get_tracer("test"))
    request = pb.ExplainRequest(
        model=TINY, image=png_bytes(np.zeros((32, 32, 3), dtype=np.uint8)), targets=pb.Targets(top_k=3),
        methods=[method(pb.METHOD_INTEGRATED_GRADIENTS), method(pb.METHOD_VANILLA), method(pb.METHOD_RISE)])
    try:
        response = asyncio.run(servicer.explain(request, _Call()))
    finally:
        servicer.close()
    VANILLA, IG, RISE, GRADCAM = pb.METHOD_VANILLA, pb.METHOD_INTEGRATED_GRADIENTS, pb.METHOD_RISE, pb.METHOD_GRADCAM
    assert [(a.method, a.target) for a in response.attributions] == [
        (VANILLA, 4), (VANILLA, 1), (VANILLA, 0), (GRADCAM, 4),
        (IG, 4), (IG, 1), (IG, 0), (RISE, 4), (RISE, 1), (RISE, 0),
    ]


def test_a_stat_that_is_not_finite_is_left_out_not_a_500():
    """JSON has no NaN: a completeness error of NaN (F(x) = F(x')) or an infinite score used to
    make the whole Vertex answer an INTERNAL error when encoded."""
    a = pb.Attribution(method=pb.METHOD_INTEGRATED_GRADIENTS, target=1)
    a.map.dtype, a.map.data = pb.DTYPE_FLOAT32, np.ones((4, 4), dtype="<f4").tobytes()
    a.map.shape.extend([4, 4])
    a.stats.update({"completeness_error": float("nan"), "score_input": float("inf"), "score_baseline": 0.5})
    out = vertex._attribution(a, pb.ExplainResponse(), "image", np.zeros((4, 4, 3), np.uint8), 1.0,
                              visualize.IG_DEFAULT, ["a", "b"])
    assert "approximationError" not in out and "instanceOutputValue" not in out
    assert out["baselineOutputValue"] == 0.5
    json.loads(codec.encode_json(out))  # encodes (allow_nan=False)


def test_predictions_and_top_k_targets_are_ranked_alike():
    """By logit, a tie to the lower index: softmax probabilities that underflow to 0 (or
    round alike) no longer reorder the predictions against the targets."""
    logits = torch.tensor([0.0, -200.0, -150.0, -300.0, -120.0, 1.0, 1.0])
    ranked = [p.class_index for p in _top_predictions(logits, [str(i) for i in range(7)], 5)]
    assert ranked == [5, 6, 0, 4, 2]
    assert Targets(top_k=5).resolve(logits) == tuple(ranked)


@pytest.mark.parametrize(
    ("override", "status", "field"),
    [
        ({"parameters": {"integratedGradientsAttribution": {"stepCount": 4,
                                                            "smoothGradConfig": {"noiseSigma": 0.1}}}}, 501,
         "explanationSpecOverride.parameters.integratedGradientsAttribution.smoothGradConfig"),
        ({"parameters": {"sampledShapleyAttribution": {"pathCount": 10}}}, 501,
         "explanationSpecOverride.parameters.sampledShapleyAttribution"),
        ({"parameters": {"integratedGradientsAttribution": {"stepCount": 0}}}, 400,
         "explanationSpecOverride.parameters.integratedGradientsAttribution.stepCount"),
        ({"parameters": {"integratedGradientsAttribution": {"stepCount": 100000}}}, 400,
         "methods[0].integrated_gradients.n_steps"),
        ({"parameters": {"topK": 0}}, 400, "explanationSpecOverride.parameters.topK"),
        ({"parameters": {"outputIndices": [99]}}, 400, "targets.classes"),
        ({"metadata": {"inputs": {"image": {"visualization": {"polarity": "UP"}}}}}, 400,
         "explanationSpecOverride.metadata.inputs.image.visualization.polarity"),
        ({"metadata": {"inputs": {"image": {"visualization": {"clipPercentLowerbound": 99.95}}}}}, 400,
         "explanationSpecOverride.metadata.inputs.image.visualization.clipPercentLowerbound"),
        ({"metadata": {"inputs": {"image": {"inputBaselines": [0]}}}}, 501,
         "explanationSpecOverride.metadata.inputs.image.inputBaselines"),
        ({"examplesOverride": {"neighborCount": 3}}, 501, "explanationSpecOverride.examplesOverride"),
    ],
)
def test_overrides_that_cannot_be_served_name_the_field(service, override, status, field):
    image = b64(png_bytes(np.zeros((32, 32, 3), dtype=np.uint8)))
    answer = httpx.post(vertex_url(service, TINY), json={"instances": [{"image": {"b64": image}}],
                                                         "explanationSpecOverride": override}, timeout=60)
    assert answer.status_code == status, answer.text
    assert answer.json()["field"].startswith(field), answer.json()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"instances": {"b64": "AAAA"}}, 400, "instances"),
        ({"instances": [{"image_bytes": {"b64": "not base64!"}}]}, 400, "instances[0].image_bytes.b64"),
        ({"instances": [{"image_bytes": {"b64": b64(b"not an image")}}]}, 400, "instances[0].image_bytes.b64"),
        ({"instances": [{"a": 1, "b": 2}]}, 400, "instances[0]"),
        ({"instances": [{"b64": b64(b"x")}] * 17}, 400, "instances"),
        ({"instances": [{"b64": "AAAA"}], "deployedModelId": "other"}, 400, "deployedModelId"),
        ({"instances": [{"b64": "AAAA"}], "parameters": {"maxPredictions": "5"}}, 400, "parameters.maxPredictions"),
        ({"instances": [{"b64": "AAAA"}], "endpointz": 1}, 400, "endpointz"),
    ],
)
def test_bad_vertex_bodies_name_the_field(service, body, status, field):
    answer = httpx.post(vertex_url(service, TINY), json=body, timeout=60)
    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == field, answer.json()


def test_an_unknown_endpoint_is_not_found(service):
    answer = httpx.post(vertex_url(service, "1234567890"), json={"instances": [{"b64": "AAAA"}]}, timeout=30)
    assert answer.status_code == 404 and answer.json()["field"] == "endpoint"
    assert TINY in answer.json()["message"]


def test_visualizations_follow_polarity_clip_and_overlay():
    rgb = np.full((4, 6, 3), 100, dtype=np.uint8)
    placed = np.array([[-4, -2, 0, 1, 2, 8]] * 4, dtype=np.float32)
    base = visualize.Visualization("PIXELS", "POSITIVE", "GREEN", 100.0, 0.0, "NONE")
    shown = visualize.visualize(rgb, placed, base)
    assert (shown[:, :3] == 0).all()  # no positive attribution: nothing drawn
    assert shown[0, 5, 1] == 255 and shown[0, 5, 0] == 0 and shown[0, 4, 1] == 64  # green, linear in the value
    negative = visualize.visualize(rgb, placed, visualize.Visualization(
        "PIXELS", "NEGATIVE", "RED_GREEN", 100.0, 0.0, "NONE"))
    assert negative[0, 0, 0] == 255 and (negative[:, 2:] == 0).all()
    both = visualize.visualize(rgb, placed, visualize.Visualization("PIXELS", "BOTH", "PINK_GREEN", 100.0, 0.0, "NONE"))
    assert tuple(both[0, 0]) == (128, 0, 128) and tuple(both[0, 5]) == (0, 255, 0)  # -4 of 8: half-bright pink
    clipped = visualize.visualize(rgb, placed, visualize.Visualization("PIXELS", "POSITIVE", "GREEN", 50.0, 0.0, "NONE"))
    assert clipped[0, 4, 1] == clipped[0, 5, 1] == 255  # over the upper percentile: saturated
    masked = visualize.visualize(rgb, placed, visualize.Visualization("PIXELS", "POSITIVE", "GREEN", 100.0, 0.0,
                                                                      "MASK_BLACK"))
    assert (masked[:, :3] == 0).all() and (masked[:, 5] == 100).all()
    outlined = visualize.visualize(rgb, placed, visualize.Visualization("OUTLINES", "POSITIVE", "GREEN", 100.0, 0.0,
                                                                        "ORIGINAL"))
    assert (outlined[:, 0] == 100).all() and (outlined[:, 3] == (0, 255, 0)).all()  # the edge of the positive part
    assert visualize.encode_jpeg(shown)[:2] == b"\xff\xd8"

