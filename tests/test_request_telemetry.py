"""A request's telemetry is recorded once, around Backend.explain (runtime/telemetry.py): one
latency sample per delivered map, a queue wait per map that waited in the deep queue (not for a
cache hit), one `method` span per deep map, and nothing left in flight. Real gRPC, tinycnn."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.service_harness import ServiceThread, method, png_bytes, with_config

from saliency.v1 import explainer_pb2 as pb

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=("tinycnn",), explanation_cache_bytes=64 << 20), span_exporter=EXPORTER)
    yield running
    running.stop()


def _request() -> pb.ExplainRequest:
    rgb = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return pb.ExplainRequest(
        model="tinycnn",
        image=png_bytes(rgb),
        targets=pb.Targets(top_k=2),
        methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=8)],
    )


def _counts(service) -> dict[str, float]:
    latency = "saliency_method_latency_seconds_count"
    labels = {"model": "tinycnn", "backend": "embedded"}
    return {
        "gradcam": service.metric(latency, {**labels, "method": "gradcam"}),
        "ig": service.metric(latency, {**labels, "method": "ig"}),
        "deep_wait": service.metric("saliency_queue_wait_seconds_count", {"model": "tinycnn", "pool": "deep"}),
        "inflight": service.metric("saliency_inflight_requests", {"model": "tinycnn"}),
    }


def _spans(service, name: str) -> list:
    service.service.tracer_provider.force_flush()
    return [s for s in EXPORTER.get_finished_spans() if s.name == name]


@pytest.mark.parametrize("rpc", ["Explain", "ExplainStream"])
def test_each_map_is_recorded_once_and_a_cache_hit_waits_in_no_queue(service, rpc):
    stub = service.stub()
    call = (lambda r: stub.Explain(r, timeout=60)) if rpc == "Explain" else (lambda r: list(stub.ExplainStream(r, timeout=60)))
    EXPORTER.clear()
    before = _counts(service)
    call(_request())
    first = _counts(service)
    call(_request())  # identical: every map from the cache
    second = _counts(service)

    def delta(a, b):
        return {k: b[k] - a[k] for k in a}

    if rpc == "Explain":  # the first call of the module computes; the stream's finds them cached
        assert delta(before, first) == {"gradcam": 2, "ig": 2, "deep_wait": 2, "inflight": 0}
    assert delta(first, second) == {"gradcam": 2, "ig": 2, "deep_wait": 0, "inflight": 0}
    spans = _spans(service, "method ig")
    assert len(spans) == 4
    assert [bool(s.attributes.get("saliency.cached")) for s in spans][-2:] == [True, True]
    assert all(s.attributes["saliency.samples"] > 0 for s in spans)
    assert len(_spans(service, "fast_pass")) == 2


def test_a_refused_request_leaves_nothing_in_flight(service):
    bad = _request()
    bad.methods[1].integrated_gradients.n_steps = 10**9
    with pytest.raises(grpc.RpcError) as info:
        service.stub().Explain(bad, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _counts(service)["inflight"] == 0
