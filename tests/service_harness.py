"""A real gRPC service on 127.0.0.1 (port 0), run on its own event loop thread, for tests."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
import time

import grpc
import skimage.data
from PIL import Image

from saliency.runtime.config import ServiceConfig
from saliency.server import RunningService, start_service
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc

TEST_CONFIG = ServiceConfig(
    port=0,
    metrics_port=0,
    http_port=0,
    models=("efficientnet_lite0", "tinycnn"),
    max_chunk=8,
    max_chunk_forward=16,
    max_batch_delay_ms=20,
    reflection=True,
    # Tests repeat identical requests to load, time out or cancel real work; the explanation
    # cache would answer them instead (tests/test_explanation_cache.py turns it on).
    explanation_cache_bytes=0,
)


class ServiceThread:
    """Start with a config; `.channel()` gives a client channel; `.stop()` shuts everything."""

    def __init__(self, config: ServiceConfig = TEST_CONFIG, span_exporter=None):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-service", daemon=True)
        self.thread.start()
        self.config = config
        self.service: RunningService = self.call(start_service(config, span_exporter), timeout=300)
        self.address = f"127.0.0.1:{self.service.port}"
        self.http_url = f"http://127.0.0.1:{self.service.http_port}" if self.service.http_port else None

    def call(self, coroutine, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def channel(self, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        if credentials is not None:
            return grpc.secure_channel(self.address, credentials, options=options + [("grpc.ssl_target_name_override", "localhost")])
        return grpc.insecure_channel(self.address, options=options)

    def stub(self) -> pb_grpc.ExplainerStub:
        return pb_grpc.ExplainerStub(self.channel())

    def metric(self, name: str, labels: dict[str, str]) -> float:
        return self.service.metrics.registry.get_sample_value(name, labels) or 0.0

    def stop(self, grace: float = 0.0) -> None:
        self.call(self.service.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def with_config(**changes) -> ServiceConfig:
    return dataclasses.replace(TEST_CONFIG, **changes)


def png_bytes(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def chelsea_png() -> bytes:
    return png_bytes(skimage.data.chelsea())


def method(kind: int, **params) -> pb.MethodRequest:
    """A MethodRequest with params in the oneof slot that fits `kind`."""
    request = pb.MethodRequest(method=kind)
    slot = {
        pb.METHOD_INTEGRATED_GRADIENTS: "integrated_gradients",
        pb.METHOD_SMOOTHGRAD: "smoothgrad",
        pb.METHOD_RISE: "rise",
        pb.METHOD_VANILLA: "gradient",
        pb.METHOD_INPUT_X_GRADIENT: "gradient",
    }.get(kind)
    if params:
        getattr(request, slot).MergeFrom(type(getattr(request, slot))(**params))
    return request


class ServerProcess:
    """`saliency serve ARGS...` as its own process on free loopback ports, SERVING on return.

    For tests whose clients must not share the server's interpreter (bursts, soaks, RSS)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, ready_timeout: float = 180):
        import os
        import subprocess
        import sys
        import tempfile

        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.port, self.metrics_port, self.http_port = free_port(), free_port(), free_port()
        self.log = tempfile.NamedTemporaryFile("w+", prefix="saliency-serve-", suffix=".log", delete=False)
        command = [
            sys.executable, "-c", "from saliency.cli import main; raise SystemExit(main())", "serve",
            "--port", str(self.port), "--metrics-port", str(self.metrics_port), "--http-port", str(self.http_port),
            *args,
        ]
        base = {k: v for k, v in os.environ.items() if k.startswith(("SALIENCY_CACHE_DIR", "PATH", "HOME", "PYTHONPATH"))}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env={**base, **(env or {})})
        self.address = f"127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        health = health_pb2_grpc.HealthStub(self.channel())
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"saliency serve did not come up:\n{self.output()}")
            time.sleep(0.2)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 64 << 20)])

    def stub(self) -> pb_grpc.ExplainerStub:
        return pb_grpc.ExplainerStub(self.channel())

    def health(self) -> int:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        return health_pb2_grpc.HealthStub(self.channel()).Check(health_pb2.HealthCheckRequest(), timeout=2).status

    def metric(self, name: str, labels: dict[str, str]) -> float:
        """One sample from the process's /metrics (0.0 when absent)."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
