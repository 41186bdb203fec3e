"""Heavy but legal requests against a real `saliency serve` process: the event loop stays free
(health answers while a 36-megapixel photograph is decoded and drawn over), overlays are
capped, and memory is admitted in bytes before any work, so small requests cannot blow the
server's memory up."""

from __future__ import annotations

import io
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from saliency.v1 import explainer_pb2 as pb
from service_harness import ServerProcess, ServiceThread, chelsea_png, method, with_config

EFFNET = "efficientnet_lite0"
SIDE = 6000  # 36 megapixels: under the default 40 Mpx limit


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """A 6000 x 6000 photograph-like PNG that compresses to a small request (smooth shading)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    rgb = np.stack([x, y, (x + y) / 2], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def peak_rss(process: ServerProcess) -> int:
    with open(f"/proc/{process.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


@pytest.fixture(scope="module")
def served():
    running = ServerProcess("--models", EFFNET)
    yield running
    running.stop()


def test_health_answers_while_a_huge_image_is_decoded_and_drawn_over(served, huge_png):
    stub = served.stub()
    health = health_pb2_grpc.HealthStub(served.channel())
    before = peak_rss(served)
    request = pb.ExplainRequest(
        model=EFFNET, image=huge_png, methods=[method(pb.METHOD_GRADCAM)], output=pb.OutputOptions(include_overlay=True)
    )
    call = stub.Explain.future(request, timeout=120)
    waits = []
    while not call.done():
        started = time.perf_counter()
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        waits.append(time.perf_counter() - started)
        assert status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(0.02)
    response = call.result()
    assert len(waits) >= 5  # the heavy call took a while: the loop was probed during it
    assert max(waits) < 0.2, sorted(waits)[-5:]
    overlay = Image.open(io.BytesIO(response.attributions[0].overlay_png))
    assert max(overlay.size) == 2048 and overlay.size[0] == overlay.size[1]
    # The photograph alone is 108 MB decoded; drawing at full size took the server past 4 GB.
    assert peak_rss(served) - before < 1.2 * 2**30


def test_a_huge_rise_is_refused_before_it_allocates(served):
    """RISE with 8192 masks used to build a mask bank of gigabytes before admission."""
    before = peak_rss(served)
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as info:
        served.stub().Explain(
            pb.ExplainRequest(model=EFFNET, image=chelsea_png(), methods=[method(pb.METHOD_RISE, n_masks=8192)]),
            timeout=5,
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "deadline" in info.value.details()
    assert time.perf_counter() - started < 1.0
    assert peak_rss(served) - before < 256 * 2**20


def test_a_request_over_the_request_memory_limit_is_refused_naming_the_field():
    running = ServiceThread(with_config(models=("tinycnn",), max_request_bytes=2 * 2**20))
    try:
        big = np.zeros((1500, 1500, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(big).save(buffer, format="PNG")
        request = pb.ExplainRequest(
            model="tinycnn",
            image=buffer.getvalue(),
            targets=pb.Targets(top_k=4),
            methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_VANILLA)],
            output=pb.OutputOptions(include_overlay=True),
        )
        with pytest.raises(grpc.RpcError) as info:
            running.stub().Explain(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details().startswith("methods: ") and "MiB" in info.value.details()
        request.output.include_overlay = False  # without the overlays it fits
        assert len(running.stub().Explain(request, timeout=30).attributions) == 8
    finally:
        running.stop()


def test_requests_in_flight_share_one_memory_budget_and_hand_it_back():
    running = ServiceThread(with_config(models=(EFFNET,)))
    try:
        stub = running.stub()
        servicer_memory = _servicer(running).memory
        ig = pb.ExplainRequest(
            model=EFFNET, image=chelsea_png(), targets=pb.Targets(top_k=2),
            methods=[method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=64)],
        )
        first = stub.Explain.future(ig, timeout=120)
        deadline = time.monotonic() + 30
        while servicer_memory.reserved == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        held = servicer_memory.reserved
        assert held > 0
        servicer_memory.limit_bytes = held + 2**20  # room for a small call, not for the crowd
        crowd = pb.ExplainRequest(
            model=EFFNET, image=chelsea_png(), targets=pb.Targets(top_k=4),
            methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_VANILLA)],
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(crowd, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "held by requests in flight" in info.value.details()
        first.cancel()
        deadline = time.monotonic() + 30
        while servicer_memory.reserved and time.monotonic() < deadline:
            time.sleep(0.01)
        assert servicer_memory.reserved == 0
        assert len(stub.Explain(crowd, timeout=60).attributions) == 8
    finally:
        running.stop()


def _servicer(running: ServiceThread):
    return running.service._servicer


def test_concurrent_huge_overlays_stay_within_the_bound(served, huge_png):
    """Four at once: decoding and drawing are bounded by the prepare pool, not by the crowd."""
    before = peak_rss(served)
    request = pb.ExplainRequest(
        model=EFFNET, image=huge_png, methods=[method(pb.METHOD_GRADCAM)], output=pb.OutputOptions(include_overlay=True)
    )
    codes = []

    def one() -> None:
        try:
            served.stub().Explain(request, timeout=120)
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and "OK" in codes, codes
    assert peak_rss(served) - before < 1.5 * 2**30
    assert served.health() == health_pb2.HealthCheckResponse.SERVING


def test_maps_that_cannot_fit_one_response_are_refused_before_any_work(huge_png):
    """Original-size float32 maps of a big photograph are 2048 x 2048 x 4 bytes = 16 MiB each:
    three do not fit a 32 MiB message (refused before any work), three float16 ones do."""
    running = ServiceThread(with_config(models=("tinycnn",)))
    try:
        request = pb.ExplainRequest(
            model="tinycnn", image=huge_png, targets=pb.Targets(top_k=3), methods=[method(pb.METHOD_GRADCAM)],
            output=pb.OutputOptions(map_size=pb.MAP_SIZE_ORIGINAL),
        )
        labels = {"model": "tinycnn", "method": "gradcam", "backend": "embedded"}
        computed_before = running.metric("saliency_method_latency_seconds_count", labels)
        for call in (running.stub().Explain, lambda r, timeout: list(running.stub().ExplainStream(r, timeout=timeout))):
            with pytest.raises(grpc.RpcError) as info:  # a stream's first message holds the fast maps
                call(request, timeout=60)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.details().startswith("output.map_size: 3 maps of 16.0 MiB")
        assert running.metric("saliency_method_latency_seconds_count", labels) == computed_before
        request.output.map_dtype = pb.DTYPE_FLOAT16
        response = running.stub().Explain(request, timeout=120)
        assert [list(a.map.shape) for a in response.attributions] == [[2048, 2048]] * 3
    finally:
        running.stop()


def test_a_call_that_ends_while_its_image_is_decoded_is_counted_by_its_reason(served, huge_png):
    labels = {"model": EFFNET, "reason": "deadline"}
    before = served.metric("saliency_rejected_total", labels)
    codes_before = served.metric("saliency_requests_total", {"rpc": "Explain", "model": EFFNET, "code": "DEADLINE_EXCEEDED"})
    with pytest.raises(grpc.RpcError) as info:  # decoding 36 Mpx takes longer than the deadline
        served.stub().Explain(pb.ExplainRequest(model=EFFNET, image=huge_png), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 30
    while served.metric("saliency_rejected_total", labels) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served.metric("saliency_rejected_total", labels) == before + 1
    assert served.metric("saliency_requests_total", {"rpc": "Explain", "model": EFFNET, "code": "DEADLINE_EXCEEDED"}) == codes_before + 1
