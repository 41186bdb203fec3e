"""Faithfulness over real gRPC (tinycnn): `evaluate` scores beside the maps, the SanityCheck
RPC, the latency-budget policy and `explain_if`, sampled scoring for the metrics, and every
new request field refused with INVALID_ARGUMENT naming it."""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
import pytest
import torch
from opentelemetry import trace

from saliency.api.servicer import ExplainerServicer, status_for
from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.types import Attribution
from saliency.codec import convert, method_params
from saliency.errors import Unimplemented
from saliency.imaging import decode_image, to_model_input
from saliency.models import get_spec, load_model
from saliency.models.weights import weights_hash
from saliency.quality.evaluate import EvaluateOptions, evaluate_in_process
from saliency.runtime.config import load_config
from saliency.runtime.metrics import Metrics
from saliency.v1 import explainer_pb2 as pb
from saliency.wire import results
from service_harness import ServiceThread, method, png_bytes, with_config


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=("tinycnn",)))
    yield running
    running.stop()


def tiny_png(seed: int) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def decode_map(t: pb.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(t.data, dtype=np.float32).reshape(tuple(t.shape)).copy())


def request(**fields) -> pb.ExplainRequest:
    fields.setdefault("model", "tinycnn")
    fields.setdefault("image", tiny_png(0))
    fields.setdefault("methods", [method(pb.METHOD_VANILLA), method(pb.METHOD_GRADCAM)])
    return pb.ExplainRequest(**fields)


NAMES = {v: k for k, v in method_params.METHOD_NAMES.items()}


# ---------------------------------------------------------------------------------- evaluate


def test_evaluate_returns_scores_beside_the_maps_equal_to_the_library(service):
    box = pb.GroundTruth(box=pb.Box(x_min=0, y_min=0, x_max=16, y_max=16))
    response = service.stub().Explain(
        request(
            targets=pb.Targets(top_k=2),
            methods=[method(pb.METHOD_VANILLA), method(pb.METHOD_GRADCAM), method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=8)],
            evaluate=pb.EvaluateOptions(ground_truth=box, perturbation_steps=8),
        ),
        timeout=60,
    )
    assert len(response.attributions) == 6  # the maps are all there, as without evaluate
    scores = {}
    for s in response.quality:
        key = (s.metric, method_params.METHOD_NAMES[s.method], s.target)
        scores.setdefault(key, []).append(s)
    targets = list(response.targets)
    for name in ("vanilla", "gradcam", "ig"):
        for target in targets:
            for metric in ("deletion_auc", "insertion_auc", "pointing_game"):
                (score,) = scores[metric, name, target]
                assert 0.0 <= score.value <= 1.0
            # One entry per pair, under the pair's first method in delivery order.
            assert len(scores.get(("agreement_spearman", name, target), [])) == {"vanilla": 2, "gradcam": 1, "ig": 0}[name]
        assert len(scores["contrast_spearman", name, targets[0]]) == 1
        assert scores["contrast_spearman", name, targets[0]][0].other_target == targets[1]
    ig_stats = {a.target: a.stats["completeness_error"] for a in response.attributions if a.method == pb.METHOD_INTEGRATED_GRADIENTS}
    for target in targets:
        assert scores["completeness_error", "ig", target][0].value == pytest.approx(ig_stats[target])

    # The same numbers as the library computes in-process on the maps the response carries.
    model = load_model("tinycnn")
    x = to_model_input(decode_image(tiny_png(0)), model.spec)
    maps = [Attribution(method_params.METHOD_NAMES[a.method], a.target, decode_map(a.map)) for a in response.attributions]
    local = evaluate_in_process(
        ChunkExecutor(model, ChunkSizes(8, 16)), x, convert.predictions_from_proto(response.predictions), maps,
        ("deletion", "insertion"), EvaluateOptions(perturbation_steps=8),
    )
    for s in local:
        assert scores[s.metric, s.method, s.target][0].value == pytest.approx(s.value, abs=1e-5)
    labels = {"model": "tinycnn", "method": "gradcam", "metric": "deletion_auc"}
    assert service.metric("saliency_explanation_quality_count", labels) >= 2


def test_stream_sends_quality_last_and_only_the_metrics_asked_for(service):
    events = list(
        service.stub().ExplainStream(
            request(
                methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_SMOOTHGRAD, n_samples=4)],
                evaluate=pb.EvaluateOptions(metrics=[pb.QUALITY_METRIC_AGREEMENT]),
            ),
            timeout=60,
        )
    )
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["prediction", "attribution", "quality"]
    (spearman, iou) = sorted(events[-1].quality.scores, key=lambda s: s.metric)
    assert (spearman.metric, iou.metric) == ("agreement_spearman", "agreement_top_iou")
    assert {spearman.method, spearman.other_method} == {pb.METHOD_GRADCAM, pb.METHOD_SMOOTHGRAD}


def test_sampled_requests_feed_the_histogram_without_changing_the_response():
    running = ServiceThread(with_config(models=("tinycnn",), quality_sample_rate=1.0))
    try:
        labels = {"model": "tinycnn", "method": "vanilla", "metric": "insertion_auc"}
        response = running.stub().Explain(request(methods=[method(pb.METHOD_VANILLA)]), timeout=30)
        assert not response.quality and not response.HasField("policy")
        for _ in range(100):  # scored in the background, after the response
            if running.metric("saliency_explanation_quality_count", labels) >= 1:
                break
            time.sleep(0.05)
        assert running.metric("saliency_explanation_quality_count", labels) == 1
    finally:
        running.stop()


# ------------------------------------------------------------------------------------ policy


def test_a_tiny_budget_falls_back_and_says_why(service):
    response = service.stub().Explain(
        request(
            methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=64), method(pb.METHOD_SMOOTHGRAD)],
            latency_budget_ms=0.01,
        ),
        timeout=30,
    )
    delivered = {a.method for a in response.attributions}
    assert delivered == {pb.METHOD_GRADCAM, pb.METHOD_INPUT_X_GRADIENT, pb.METHOD_VANILLA}
    choices = {c.requested: c for c in response.policy.choices}
    assert choices[pb.METHOD_INTEGRATED_GRADIENTS].chosen == pb.METHOD_INPUT_X_GRADIENT
    assert choices[pb.METHOD_SMOOTHGRAD].chosen == pb.METHOD_VANILLA
    assert "fell back" in choices[pb.METHOD_INTEGRATED_GRADIENTS].reason
    assert "0.01 ms budget" in choices[pb.METHOD_INTEGRATED_GRADIENTS].reason
    assert choices[pb.METHOD_GRADCAM].chosen == pb.METHOD_GRADCAM
    assert response.policy.budget_ms == pytest.approx(0.01) and response.policy.sample_ms > 0


def test_a_generous_budget_grows_ig_steps_until_the_completeness_target(service):
    response = service.stub().Explain(
        request(
            targets=pb.Targets(top_k=2),
            methods=[method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=64)],
            latency_budget_ms=60_000,
            completeness_target=0.001,
        ),
        timeout=60,
    )
    igs = {a.target: a for a in response.attributions if a.method == pb.METHOD_INTEGRATED_GRADIENTS}
    assert set(igs) == set(response.targets)
    choices = {c.target: c for c in response.policy.choices if c.requested == pb.METHOD_INTEGRATED_GRADIENTS}
    assert set(choices) == set(response.targets)
    for target, choice in choices.items():
        stats = igs[target].stats
        assert choice.chosen == pb.METHOD_INTEGRATED_GRADIENTS
        assert choice.n_steps == stats["n_steps"] in (4, 8, 16, 32, 64)
        assert choice.completeness_error == pytest.approx(stats["completeness_error"])
        # Stopped at the first round under the target, or at the cap: never past either.
        assert stats["completeness_error"] <= 0.001 or choice.n_steps == 64
        assert stats["policy_rounds"] == [4, 8, 16, 32, 64].index(choice.n_steps) + 1
        assert "completeness error" in choice.reason


def test_explain_if_skips_deep_maps_when_the_margin_is_large(service):
    stub = service.stub()
    methods = [method(pb.METHOD_GRADCAM), method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=8)]
    confident = stub.Explain(request(methods=methods, explain_if=pb.ExplainCondition(margin_below=1e-6)), timeout=30)
    p = [q.probability for q in confident.predictions]
    assert p[0] - p[1] >= 1e-6
    assert {a.method for a in confident.attributions} == {pb.METHOD_GRADCAM}  # fast maps only
    assert not confident.policy.deep_maps and "margin" in confident.policy.reason
    assert [c.chosen for c in confident.policy.choices] == [pb.METHOD_UNSPECIFIED]
    uncertain = stub.Explain(request(methods=methods, explain_if=pb.ExplainCondition(margin_below=1.0)), timeout=30)
    assert {a.method for a in uncertain.attributions} == {pb.METHOD_GRADCAM, pb.METHOD_INTEGRATED_GRADIENTS}
    assert uncertain.policy.deep_maps and "uncertain" in uncertain.policy.reason


# ------------------------------------------------------------------------------- SanityCheck


def test_sanity_check_rpc_on_tinycnn(service):
    served = load_model("tinycnn")  # the very module the in-process service serves
    before = weights_hash(served.module)
    response = service.stub().SanityCheck(
        pb.SanityCheckRequest(
            model="tinycnn", image=tiny_png(3), layers=["conv1", "fc"],
            methods=[method(pb.METHOD_VANILLA), method(pb.METHOD_GRADCAM)], seed=7,
        ),
        timeout=60,
    )
    assert list(response.layers) == ["fc", "conv1"]
    assert response.weights_sha256 == before == weights_hash(served.module)
    rows = results.sanity_rows_from_proto(response)
    assert {(r.mode, r.layer, r.method) for r in rows} == {
        (mode, layer, m) for mode in ("cascading", "independent") for layer in ("fc", "conv1") for m in ("vanilla", "gradcam")
    }
    for r in rows:
        assert -1 <= r.spearman_abs <= 1 and -1 <= r.ssim <= 1 and not math.isnan(r.hog)
    full = next(r for r in rows if (r.mode, r.layer, r.method) == ("cascading", "conv1", "vanilla"))
    assert full.spearman_abs < 0.6


# ---------------------------------------------------------------------------------- bad input

EVAL = pb.EvaluateOptions
BOX = pb.Box
MASK_SHAPE = [32, 32]


def mask(values: np.ndarray) -> pb.GroundTruth:
    return pb.GroundTruth(mask=pb.Tensor(shape=list(values.shape), dtype=pb.DTYPE_FLOAT32, data=values.astype(np.float32).tobytes()))


BAD_EXPLAIN = {
    "metric unspecified": ({"evaluate": EVAL(metrics=[0])}, "evaluate.metrics[0]"),
    "metric unknown": ({"evaluate": EVAL(metrics=[1, 99])}, "evaluate.metrics[1]"),
    "metric twice": ({"evaluate": EVAL(metrics=[1, 1])}, "evaluate.metrics"),
    "pointing without truth": ({"evaluate": EVAL(metrics=[pb.QUALITY_METRIC_POINTING_GAME])}, "evaluate.metrics[0]"),
    "contrast top-1": ({"evaluate": EVAL(metrics=[pb.QUALITY_METRIC_CONTRAST])}, "evaluate.metrics[0]"),
    "agreement one method": (
        {"evaluate": EVAL(metrics=[pb.QUALITY_METRIC_AGREEMENT]), "methods": [method(pb.METHOD_VANILLA)]},
        "evaluate.metrics[0]",
    ),
    "completeness no ig": ({"evaluate": EVAL(metrics=[pb.QUALITY_METRIC_COMPLETENESS])}, "evaluate.metrics[0]"),
    "steps 1": ({"evaluate": EVAL(perturbation_steps=1)}, "evaluate.perturbation_steps"),
    "steps 1000": ({"evaluate": EVAL(perturbation_steps=1000)}, "evaluate.perturbation_steps"),
    "top fraction 0": ({"evaluate": EVAL(top_fraction=0.0)}, "evaluate.top_fraction"),
    "top fraction nan": ({"evaluate": EVAL(top_fraction=float("nan"))}, "evaluate.top_fraction"),
    "tolerance -1": ({"evaluate": EVAL(pointing_tolerance=-1)}, "evaluate.pointing_tolerance"),
    "empty ground truth": ({"evaluate": EVAL(ground_truth=pb.GroundTruth())}, "evaluate.ground_truth"),
    "box outside": ({"evaluate": EVAL(ground_truth=pb.GroundTruth(box=BOX(x_min=0, y_min=0, x_max=40, y_max=8)))}, "evaluate.ground_truth.box"),
    "box empty": ({"evaluate": EVAL(ground_truth=pb.GroundTruth(box=BOX(x_min=5, y_min=0, x_max=5, y_max=8)))}, "evaluate.ground_truth.box"),
    "box nan": ({"evaluate": EVAL(ground_truth=pb.GroundTruth(box=BOX(x_min=float("nan"), y_max=8, x_max=8)))}, "evaluate.ground_truth.box.x_min"),
    "mask shape": ({"evaluate": EVAL(ground_truth=mask(np.ones((16, 16))))}, "evaluate.ground_truth.mask.shape"),
    "mask zero": ({"evaluate": EVAL(ground_truth=mask(np.zeros(MASK_SHAPE)))}, "evaluate.ground_truth.mask"),
    "mask nan": ({"evaluate": EVAL(ground_truth=mask(np.full(MASK_SHAPE, np.nan)))}, "evaluate.ground_truth.mask"),
    "mask bytes": (
        {"evaluate": EVAL(ground_truth=pb.GroundTruth(mask=pb.Tensor(shape=MASK_SHAPE, data=b"xx")))},
        "evaluate.ground_truth.mask.data",
    ),
    "budget 0": ({"latency_budget_ms": 0.0}, "latency_budget_ms"),
    "budget negative": ({"latency_budget_ms": -5.0}, "latency_budget_ms"),
    "budget inf": ({"latency_budget_ms": float("inf")}, "latency_budget_ms"),
    "budget nan": ({"latency_budget_ms": float("nan")}, "latency_budget_ms"),
    "target without budget": ({"completeness_target": 0.1}, "completeness_target"),
    "target 0": ({"latency_budget_ms": 100.0, "completeness_target": 0.0}, "completeness_target"),
    "target 2": ({"latency_budget_ms": 100.0, "completeness_target": 2.0}, "completeness_target"),
    "explain_if empty": ({"explain_if": pb.ExplainCondition()}, "explain_if"),
    "margin 0": ({"explain_if": pb.ExplainCondition(margin_below=0.0)}, "explain_if.margin_below"),
    "probability 1.5": ({"explain_if": pb.ExplainCondition(probability_below=1.5)}, "explain_if.probability_below"),
    "margin nan": ({"explain_if": pb.ExplainCondition(margin_below=float("nan"))}, "explain_if.margin_below"),
}


@pytest.mark.parametrize(("fields", "field"), BAD_EXPLAIN.values(), ids=BAD_EXPLAIN.keys())
def test_bad_new_explain_fields_name_the_field(service, fields, field):
    with pytest.raises(grpc.RpcError) as info:
        service.stub().Explain(request(**fields), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: "), info.value.details()


SANITY = {"model": "tinycnn", "image": tiny_png(1)}
BAD_SANITY = {
    "no model": ({"model": ""}, grpc.StatusCode.INVALID_ARGUMENT, "model"),
    "unknown model": ({"model": "resnet9000"}, grpc.StatusCode.NOT_FOUND, "model"),
    "no input": ({"image": None}, grpc.StatusCode.INVALID_ARGUMENT, "input"),
    "bad image": ({"image": b"\x89PNG nope"}, grpc.StatusCode.INVALID_ARGUMENT, "image"),
    "unknown layer": ({"layers": ["fc", "nope"]}, grpc.StatusCode.INVALID_ARGUMENT, "layers[1]"),
    "layer without parameters": ({"layers": ["act1"]}, grpc.StatusCode.INVALID_ARGUMENT, "layers[0]"),
    "layer text": ({"layers": ["fc; rm -rf"]}, grpc.StatusCode.INVALID_ARGUMENT, "layers[0]"),
    "randomization unspecified": ({"randomizations": [0]}, grpc.StatusCode.INVALID_ARGUMENT, "randomizations[0]"),
    "randomization unknown": ({"randomizations": [1, 9]}, grpc.StatusCode.INVALID_ARGUMENT, "randomizations[1]"),
    "randomization twice": ({"randomizations": [1, 1]}, grpc.StatusCode.INVALID_ARGUMENT, "randomizations"),
    "target": ({"target": 10}, grpc.StatusCode.INVALID_ARGUMENT, "target"),
    "seed": ({"seed": -1}, grpc.StatusCode.INVALID_ARGUMENT, "seed"),
    "method": ({"methods": [pb.MethodRequest()]}, grpc.StatusCode.INVALID_ARGUMENT, "methods[0].method"),
    "method for another architecture": (
        {"methods": [pb.MethodRequest(method=pb.METHOD_VANILLA), pb.MethodRequest(method=pb.METHOD_ATTENTION_ROLLOUT)]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "methods[1].method",
    ),
    "method params": (
        {"methods": [method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=0)]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "methods[0].integrated_gradients.n_steps",
    ),
}


@pytest.mark.parametrize(("fields", "code", "field"), BAD_SANITY.values(), ids=BAD_SANITY.keys())
def test_bad_sanity_check_requests_name_the_field(service, fields, code, field):
    values = {**SANITY, **fields}
    values = {k: v for k, v in values.items() if v is not None}
    with pytest.raises(grpc.RpcError) as info:
        service.stub().SanityCheck(pb.SanityCheckRequest(**values), timeout=30)
    assert info.value.code() == code
    assert info.value.details().startswith(f"{field}: "), info.value.details()


def test_a_backend_without_the_features_answers_unimplemented():
    class Bare:  # what a backend that declares no `features` looks like to the servicer
        name = "torchserve"
        models = {"tinycnn": get_spec("tinycnn")}

    servicer = ExplainerServicer(Bare(), load_config(env={}), Metrics(), trace.get_tracer("test"))
    for fields, field in [
        ({"evaluate": EVAL()}, "evaluate"),
        ({"latency_budget_ms": 50.0}, "latency_budget_ms"),
        ({"explain_if": pb.ExplainCondition(margin_below=0.1)}, "explain_if"),
    ]:
        with pytest.raises(Unimplemented) as info:
            servicer._parse(request(**fields))
        assert info.value.field == field and status_for(info.value) == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(Unimplemented):
        servicer._prepare_sanity(pb.SanityCheckRequest(**SANITY))
    servicer._parse(request())  # a plain request is fine


def test_quality_sample_rate_is_checked():
    assert load_config(env={"SALIENCY_QUALITY_SAMPLE_RATE": "0.25"}).quality_sample_rate == 0.25
    with pytest.raises(ValueError, match="quality_sample_rate"):
        load_config(env={"SALIENCY_QUALITY_SAMPLE_RATE": "1.5"})
