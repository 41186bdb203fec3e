"""Admission and overload over real gRPC: every slot returns on every path (done, deadline,
cancel), a burst is refused at once rather than timed out, fast calls are not starved by it,
and the request counter reports how each call really ended."""

from __future__ import annotations

import statistics
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from saliency.v1 import explainer_pb2 as pb
from service_harness import ServerProcess, ServiceThread, chelsea_png, method, with_config

EFFNET = "efficientnet_lite0"
CHELSEA = chelsea_png()  # encoded once: the burst's clients must not spend the CPU it measures
FAST_METHODS = [
    method(kind)
    for kind in (
        pb.METHOD_VANILLA,
        pb.METHOD_INPUT_X_GRADIENT,
        pb.METHOD_GRADCAM,
        pb.METHOD_GRADCAM_PP,
        pb.METHOD_EIGENCAM,
        pb.METHOD_CAM,
    )
]


def slow_fast_request() -> pb.ExplainRequest:
    """A valid request whose fast pass is slow: 16 targets x 6 fast methods."""
    return pb.ExplainRequest(model=EFFNET, image=CHELSEA, targets=pb.Targets(top_k=16), methods=FAST_METHODS)


def gradcam_request() -> pb.ExplainRequest:
    return pb.ExplainRequest(model=EFFNET, image=CHELSEA, methods=[method(pb.METHOD_GRADCAM)])


def ig_request(n_steps: int) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model=EFFNET, image=CHELSEA, methods=[method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=n_steps)]
    )


def settle(condition, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=(EFFNET,), fast_workers=1, max_fast_queue=4))
    yield running
    running.stop()


def test_fast_slots_return_after_deadlines_and_cancels(service):
    """Calls that give up while their fast pass waits must hand their queue slot back."""
    stub = service.stub()
    for _ in range(3):
        blockers = [stub.Explain.future(slow_fast_request(), timeout=60) for _ in range(2)]
        short = [stub.Explain.future(gradcam_request(), timeout=0.3) for _ in range(8)]
        cancelled = [stub.Explain.future(gradcam_request(), timeout=60) for _ in range(4)]
        time.sleep(0.1)
        for call in cancelled:
            call.cancel()
        for call in short:
            try:
                call.result()
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
        for call in blockers:
            try:
                call.result()
            except grpc.RpcError as exc:  # refused at once when the queue was full
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    depth = {"model": EFFNET, "pool": "fast"}
    assert settle(lambda: service.metric("saliency_queue_depth", depth) == 0)
    assert settle(lambda: service.metric("saliency_inflight_requests", {"model": EFFNET}) == 0)
    for _ in range(6):  # more than max_fast_queue: a leak of 4 slots would refuse these
        assert len(stub.Explain(gradcam_request(), timeout=60).attributions) == 1


def test_requests_counter_reports_deadline_and_cancel(service):
    stub = service.stub()
    labels = {"rpc": "Explain", "model": EFFNET}

    def count(code: str) -> float:
        return service.metric("saliency_requests_total", {**labels, "code": code})

    ok, deadline, cancelled = count("OK"), count("DEADLINE_EXCEEDED"), count("CANCELLED")
    reason_deadline = service.metric("saliency_rejected_total", {"model": EFFNET, "reason": "deadline"})
    with pytest.raises(grpc.RpcError) as info:  # admitted (one pass looks quick), then too slow
        stub.Explain(slow_fast_request(), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    call = stub.Explain.future(ig_request(200), timeout=60)
    time.sleep(0.5)
    call.cancel()
    assert settle(lambda: count("CANCELLED") == cancelled + 1)
    assert settle(lambda: count("DEADLINE_EXCEEDED") == deadline + 1)
    assert count("OK") == ok
    assert service.metric("saliency_rejected_total", {"model": EFFNET, "reason": "deadline"}) == reason_deadline + 1


@pytest.fixture(scope="module")
def served():
    """Default settings, in a process of its own: the burst's 50 client threads must not share
    the server's interpreter."""
    running = ServerProcess("--models", EFFNET)
    yield running
    running.stop()


def test_a_burst_is_refused_at_once_or_served_in_time_and_gradcam_is_not_starved(served):
    """50 concurrent IG calls with a 5 s deadline: each either completes within it or is
    refused (RESOURCE_EXHAUSTED) within 100 ms; a Grad-CAM sent during the burst completes
    within twice its unloaded latency."""
    stub = served.stub()

    def gradcam_seconds() -> float:
        started = time.perf_counter()
        stub.Explain(gradcam_request(), timeout=30)
        return time.perf_counter() - started

    for _ in range(3):
        gradcam_seconds()  # warm
    unloaded = statistics.median(gradcam_seconds() for _ in range(7))

    outcomes: list[tuple[str, float]] = []
    details: list[str] = []
    lock = threading.Lock()

    def one_ig() -> None:
        started = time.perf_counter()
        try:
            stub.Explain(ig_request(50), timeout=5.0)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
            details.append(exc.details())
        with lock:
            outcomes.append((code, time.perf_counter() - started))

    threads = [threading.Thread(target=one_ig) for _ in range(50)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    loaded = [gradcam_seconds() for _ in range(5)]
    assert served.health() == health_pb2.HealthCheckResponse.SERVING
    for thread in threads:
        thread.join(timeout=60)

    codes = [code for code, _ in outcomes]
    assert len(codes) == 50
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, (codes, details, outcomes)
    assert "RESOURCE_EXHAUSTED" in codes and "OK" in codes, details[:3]
    assert max(seconds for code, seconds in outcomes if code == "OK") < 5.0, outcomes
    assert max(seconds for code, seconds in outcomes if code == "RESOURCE_EXHAUSTED") < 0.1, sorted(outcomes)
    assert statistics.median(loaded) <= 2 * unloaded, (loaded, unloaded)
    assert settle(lambda: served.metric("saliency_queue_depth", {"model": EFFNET, "pool": "deep"}) == 0)


def test_admission_costs_are_remembered_only_for_parameters_without_tensors():
    import torch

    from saliency.attribution.registry import make_params
    from saliency.attribution.types import Targets
    from saliency.runtime.admission import _cost_key as _admission_key

    plain = {"ig": make_params("ig", n_steps=8)}
    assert _admission_key("m", Targets(), plain, None) == _admission_key("m", Targets(), {"ig": make_params("ig", n_steps=8)}, None)
    assert _admission_key("m", Targets(), plain, None) != _admission_key("m", Targets(top_k=2), plain, None)
    custom = {"ig": make_params("ig", baseline="custom", custom_baseline=torch.zeros(3, 8, 8))}
    assert _admission_key("m", Targets(), custom, None) is None  # it would keep the tensor alive
