"""End to end over real gRPC on 127.0.0.1: Explain, ExplainStream, ListModels, health,
reflection, cross-request batching, deadlines, bad input, metrics and traces."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import skimage.data
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.registry import make_params
from saliency.attribution.types import Targets
from saliency.imaging import decode_image, to_model_input
from saliency.models import load_model
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, chelsea_png, method, png_bytes, with_config

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(span_exporter=EXPORTER)
    yield running
    running.stop()


def decode_map(t: pb.Tensor) -> np.ndarray:
    dtype = np.float16 if t.dtype == pb.DTYPE_FLOAT16 else np.float32
    return np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape)).astype(np.float32)


def tiny_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


def test_explain_returns_the_in_process_engine_maps(service):
    request = pb.ExplainRequest(
        model="efficientnet_lite0",
        image=chelsea_png(),
        targets=pb.Targets(top_k=2),
        methods=[
            method(pb.METHOD_VANILLA),
            method(pb.METHOD_GRADCAM),
            method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=16),
        ],
    )
    response = service.stub().Explain(request, timeout=120)
    assert response.predictions[0].class_index == 285
    assert list(response.targets) == [p.class_index for p in response.predictions[:2]]
    assert response.request_id

    model = load_model("efficientnet_lite0")
    x = to_model_input(skimage.data.chelsea(), model.spec)
    local = Engine(model, ChunkSizes(8, 16)).explain(
        x, Targets(top_k=2), {"vanilla": make_params("vanilla"), "gradcam": make_params("gradcam"), "ig": make_params("ig", n_steps=16)}
    )
    expected = {(a.method, a.target): a.map.numpy() for a in local.attributions}
    names = {pb.METHOD_VANILLA: "vanilla", pb.METHOD_GRADCAM: "gradcam", pb.METHOD_INTEGRATED_GRADIENTS: "ig"}
    got = {(names[a.method], a.target): a for a in response.attributions}
    assert set(got) == set(expected)
    for key, attribution in got.items():
        np.testing.assert_allclose(decode_map(attribution.map), expected[key], rtol=1e-3, atol=1e-5)
    ig = got["ig", 285]
    assert ig.stats["completeness_error"] < 0.5 and ig.stats["samples"] == 18
    assert ig.compute_ms > 0


def test_stream_delivers_the_fast_event_before_any_deep_event(service):
    request = pb.ExplainRequest(
        model="tinycnn",
        image=tiny_png(0),
        targets=pb.Targets(top_k=2),
        methods=[
            method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=20),
            method(pb.METHOD_GRADCAM),
            method(pb.METHOD_RISE, n_masks=40, grid_size=4),
        ],
    )
    events = list(service.stub().ExplainStream(request, timeout=60))
    assert events[0].WhichOneof("event") == "prediction"
    first = events[0].prediction
    assert len(first.predictions) == 5
    assert {a.method for a in first.attributions} == {pb.METHOD_GRADCAM}
    deep = [e.attribution for e in events[1:]]
    assert all(e.WhichOneof("event") == "attribution" for e in events[1:])
    assert sorted((a.method, a.target) for a in deep) == sorted(
        (m, t) for m in (pb.METHOD_INTEGRATED_GRADIENTS, pb.METHOD_RISE) for t in first.targets
    )


def test_list_models(service):
    response = service.stub().ListModels(pb.ListModelsRequest(), timeout=10)
    models = {m.name: m for m in response.models}
    assert set(models) == {"efficientnet_lite0", "tinycnn"}
    eff = models["efficientnet_lite0"]
    assert (eff.height, eff.width, eff.num_classes) == (224, 224, 1000)
    methods = {m.name: m for m in eff.methods}
    assert {"vanilla", "gradcam", "ig", "smoothgrad", "rise"} <= set(methods)
    assert methods["ig"].kind == "deep" and methods["gradcam"].kind == "fast"
    n_steps = {p.name: p for p in methods["ig"].parameters}["n_steps"]
    assert n_steps.maximum == 1024 and n_steps.default_value == "50"


def test_health_and_reflection(service):
    channel = service.channel()
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "saliency.v1.Explainer"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert "saliency.v1.Explainer" in services and "grpc.health.v1.Health" in services


def test_concurrent_ig_requests_share_batches_and_match_unbatched(service):
    before_count = service.metric("saliency_batch_requests_count", {"model": "tinycnn", "pool": "deep"})
    before_sum = service.metric("saliency_batch_requests_sum", {"model": "tinycnn", "pool": "deep"})
    n_requests, results, errors = 6, {}, []
    barrier = threading.Barrier(n_requests)

    def call(i: int) -> None:
        try:
            stub = service.stub()
            barrier.wait()
            results[i] = stub.Explain(
                pb.ExplainRequest(
                    model="tinycnn",
                    image=tiny_png(i),
                    targets=pb.Targets(classes=pb.ClassList(indices=[i])),
                    methods=[method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=4)],
                ),
                timeout=60,
            )
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n_requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    chunks = service.metric("saliency_batch_requests_count", {"model": "tinycnn", "pool": "deep"}) - before_count
    requests_in_chunks = service.metric("saliency_batch_requests_sum", {"model": "tinycnn", "pool": "deep"}) - before_sum
    # Alone, each request needs one gradient chunk (4 path points) and one forward-only chunk
    # (its 2 endpoints): 12 for six. The worker holds a partial chunk up to max_batch_delay.
    assert chunks < n_requests
    assert requests_in_chunks / chunks > 1.5
    model = load_model("tinycnn")
    engine = Engine(model, ChunkSizes(8, 16))
    for i, response in results.items():
        x = to_model_input(decode_image(tiny_png(i)), model.spec)
        alone = engine.explain(x, Targets(classes=(i,)), {"ig": make_params("ig", n_steps=4)}).attributions[0]
        np.testing.assert_allclose(decode_map(response.attributions[0].map), alone.map.numpy(), rtol=1e-4, atol=1e-6)


def test_queued_deep_work_is_refused_or_dropped_without_computing_it(service):
    """Behind a long IG: a call whose deadline the queue would outlast is refused at once; a
    call that gives up while its samples wait has them dropped, never computed."""
    stub = service.stub()
    dropped_before = service.metric("saliency_dropped_samples_total", {"model": "efficientnet_lite0"})
    samples_before = service.service.backend.workers["efficientnet_lite0"].executor.stats.samples

    def ig(n_steps: int) -> pb.ExplainRequest:
        return pb.ExplainRequest(
            model="efficientnet_lite0", image=chelsea_png(), methods=[method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=n_steps)]
        )

    blocker = stub.Explain.future(ig(400), timeout=120)
    time.sleep(1.0)  # the blocker's samples are queued ahead
    with pytest.raises(grpc.RpcError) as info:  # how fast: test_admission.py, against a process of its own
        stub.Explain(ig(300), timeout=2.0)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "would take about" in info.value.details() and "deadline of 1.9" in info.value.details()
    waiting = stub.Explain.future(ig(300), timeout=120)
    time.sleep(1.0)
    waiting.cancel()
    blocker.cancel()
    worker = service.service.backend.workers["efficientnet_lite0"]
    for _ in range(100):
        if worker.executor.pending_samples == 0:
            break
        time.sleep(0.1)
    assert worker.executor.pending_samples == 0
    computed = worker.executor.stats.samples - samples_before
    dropped = service.metric("saliency_dropped_samples_total", {"model": "efficientnet_lite0"}) - dropped_before
    assert dropped >= 302  # every sample of the cancelled request, none computed
    assert computed + dropped == 402 + 302  # each sample either computed or dropped, once
    assert service.metric("saliency_rejected_total", {"model": "efficientnet_lite0", "reason": "overloaded"}) >= 1
    assert service.metric("saliency_rejected_total", {"model": "efficientnet_lite0", "reason": "cancelled"}) >= 1


BAD_REQUESTS = [
    (pb.ExplainRequest(model="resnet9000", image=b"x"), grpc.StatusCode.NOT_FOUND, "model"),
    (pb.ExplainRequest(model="", image=b"x"), grpc.StatusCode.INVALID_ARGUMENT, "model"),
    (pb.ExplainRequest(model="tinycnn"), grpc.StatusCode.INVALID_ARGUMENT, "input"),
    (pb.ExplainRequest(model="tinycnn", image=b"\x89PNG garbage"), grpc.StatusCode.INVALID_ARGUMENT, "image"),
    (
        pb.ExplainRequest(model="tinycnn", image=tiny_png(1), methods=[method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=0)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "n_steps",
    ),
    (
        pb.ExplainRequest(model="tinycnn", image=tiny_png(1), targets=pb.Targets(classes=pb.ClassList(indices=[10]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "targets",
    ),
    (
        pb.ExplainRequest(model="tinycnn", tensor=pb.Tensor(shape=[3, 32, 32], dtype=pb.DTYPE_FLOAT32, data=np.full((3, 32, 32), np.nan, np.float32).tobytes())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN",
    ),
    (pb.ExplainRequest(model="tinycnn", image=tiny_png(1), request_id="x" * 500), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
]


@pytest.mark.parametrize(("request_", "code", "mentions"), BAD_REQUESTS)
def test_bad_input_gets_an_actionable_status_and_the_service_keeps_serving(service, request_, code, mentions):
    stub = service.stub()
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(request_, timeout=30)
    assert info.value.code() == code
    assert mentions in info.value.details()
    ok = stub.Explain(pb.ExplainRequest(model="tinycnn", image=tiny_png(2), methods=[method(pb.METHOD_GRADCAM)]), timeout=30)
    assert len(ok.attributions) == 1


def test_metrics_endpoint_exports_per_method_latency(service):
    service.stub().Explain(
        pb.ExplainRequest(model="tinycnn", image=tiny_png(3), methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_SMOOTHGRAD, n_samples=4)]),
        timeout=30,
    )
    body = urllib.request.urlopen(f"http://127.0.0.1:{service.service.metrics_port}/metrics", timeout=5).read().decode()
    for method_name in ("gradcam", "smoothgrad"):
        assert f'saliency_method_latency_seconds_count{{backend="embedded",method="{method_name}",model="tinycnn"}}' in body
    assert 'saliency_requests_total{code="OK",model="tinycnn",rpc="Explain"}' in body
    for name in ("saliency_queue_wait_seconds", "saliency_batch_samples", "saliency_inflight_requests", "saliency_queue_depth"):
        assert name in body


def test_traces_have_a_request_span_method_children_and_linked_batch_spans(service):
    EXPORTER.clear()
    service.stub().Explain(
        pb.ExplainRequest(model="tinycnn", image=tiny_png(4), methods=[method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=8)]),
        timeout=30,
    )
    service.service.tracer_provider.force_flush()
    spans = EXPORTER.get_finished_spans()
    by_name = {s.name: s for s in spans}
    root = by_name["saliency.v1.Explainer/Explain"]
    assert by_name["fast_pass"].parent.span_id == root.context.span_id
    assert by_name["method ig"].parent.span_id == root.context.span_id
    mine = [
        s for s in spans
        if s.name == "deep_batch" and any(link.context.span_id == root.context.span_id for link in s.links)
    ]
    assert sum(s.attributes["saliency.samples"] for s in mine) == 8 + 2  # path points + endpoints


def test_every_method_reports_its_latency_to_prometheus():
    """Registry-driven: a new method is covered by construction (on a model it can explain)."""
    from saliency.attribution.registry import all_methods, methods_for
    from saliency.codec.method_params import method_requests_to_proto
    from saliency.models import get_spec
    from test_deep_methods import SMALL

    models = ("tinycnn", "tinyvit")
    running = ServiceThread(with_config(models=models))
    try:
        for model in models:
            names = sorted(methods_for(get_spec(model)))
            for batch in (names[i : i + 8] for i in range(0, len(names), 8)):  # under max_methods
                params = {name: make_params(name, **SMALL.get(name, {})) for name in batch}
                request = pb.ExplainRequest(
                    model=model, tensor=pb.Tensor(shape=[3, 32, 32], data=np.zeros((3, 32, 32), np.float32).tobytes()),
                    methods=method_requests_to_proto(params),
                )
                answered = running.stub().Explain(request, timeout=120).attributions
                assert {a.method for a in answered} == {r.method for r in request.methods}
        for name in all_methods():
            model = next(m for m in models if name in methods_for(get_spec(m)))
            labels = {"model": model, "method": name, "backend": "embedded"}
            assert running.metric("saliency_method_latency_seconds_count", labels) >= 1, name
    finally:
        running.stop()
