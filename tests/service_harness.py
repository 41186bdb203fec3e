"""A real gRPC service on 127.0.0.1 (port 0), run on its own event loop thread, for tests."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading

import grpc
import skimage.data
from PIL import Image

from saliency.api.server import RunningService, start_service
from saliency.runtime.config import ServiceConfig
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc

TEST_CONFIG = ServiceConfig(
    port=0,
    metrics_port=0,
    models=("efficientnet_lite0", "tinycnn"),
    max_chunk=8,
    max_chunk_forward=16,
    max_batch_delay_ms=20,
    reflection=True,
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
