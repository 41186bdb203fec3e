"""`saliency serve` as a real process: it comes up SERVING and, on SIGTERM, finishes the calls
in flight, refuses new ones and exits 0 within its grace period."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc
from service_harness import method, png_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server_process(tmp_path):
    port, metrics_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-c", "from saliency.cli import main; raise SystemExit(main())",
            "serve", "--models", "tinycnn", "--port", str(port), "--metrics-port", str(metrics_port),
            "--http-port", "0", "--max-chunk", "4", "--max-chunk-forward", "4", "--grace-s", "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"SALIENCY_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 120
    while True:
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"server did not come up:\n{process.stdout.read()}")
        time.sleep(0.2)
    yield process, channel
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def test_sigterm_drains_in_flight_requests_then_exits_cleanly(server_process):
    process, channel = server_process
    stub = pb_grpc.ExplainerStub(channel)
    image = png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    slow = pb.ExplainRequest(
        model="tinycnn", image=image, targets=pb.Targets(top_k=3),
        methods=[method(pb.METHOD_SMOOTHGRAD, n_samples=1000), method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=1000)],
    )
    outcome = {}

    def call() -> None:
        try:
            outcome["response"] = stub.Explain(slow, timeout=60)
            outcome["finished"] = time.monotonic()
        except grpc.RpcError as exc:
            outcome["error"] = exc

    in_flight = threading.Thread(target=call)
    in_flight.start()
    time.sleep(0.5)  # the request is being computed
    assert "finished" not in outcome, "make the request slower: it ended before SIGTERM"
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    in_flight.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert len(outcome["response"].attributions) == 6  # 2 methods x 3 targets, all delivered
    assert outcome["finished"] > signalled
    assert process.wait(timeout=30) == 0
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(pb.ExplainRequest(model="tinycnn", image=image), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
