"""Python clients for the saliency gRPC service: plain values in, numpy maps out.

    with ExplainerClient("127.0.0.1:50051", token="...") as client:
        result = client.explain(png_bytes, "efficientnet_lite0", {"gradcam": None, "ig": {"n_steps": 32}},
                                Targets(top_k=2))
        result.attributions[0].map  # numpy float32 [H, W]

`AsyncExplainerClient` has the same methods as coroutines / async iterators (grpc.aio).
This module and `saliency.wire` import only grpcio, protobuf and numpy (no torch): install
them alone with the `saliency-client` distribution (clients/python, docs/client.md).
Parameters are sent as given and not range-checked here: the server's limits may differ from
the defaults, so the server is the judge. RPC failures surface as `grpc.RpcError` (`.code()`,
`.details()`): the status code says whether to fix the request (INVALID_ARGUMENT, NOT_FOUND,
...) or retry (UNAVAILABLE, RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf import wrappers_pb2

from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc
from saliency.wire import requests, results
from saliency.wire.results import (
    AttributionEvent,
    Event,
    ExplainResult,
    MapResult,
    QualityReport,
    SanityCheckResult,
)
from saliency.wire.types import (
    ExplainCondition,
    OutputOptions,
    PolicyDecision,
    PolicyOptions,
    Targets,
)

__all__ = [
    "AsyncExplainerClient",
    "AttributionEvent",
    "ExplainCondition",
    "ExplainResult",
    "ExplainerClient",
    "MapResult",
    "OutputOptions",
    "PolicyDecision",
    "PolicyOptions",
    "QualityReport",
    "SanityCheckResult",
    "Targets",
]

SERVICE_NAME = "saliency.v1.Explainer"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # maps of several methods x targets add up fast
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Calls go round the target's addresses: with "dns:///saliency-headless.NS:50051" (the
    # chart's headless Service) every ready pod gets calls, not just the first one reached.
    ("grpc.lb_policy_name", "round_robin"),
)

# grpc.health.v1 without grpcio-health-checking: HealthCheckRequest {string service = 1} and
# HealthCheckResponse {ServingStatus status = 1} have the wire format of StringValue and
# Int32Value (field 1, length-delimited / varint), which protobuf itself ships.
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}

Image = Any  # encoded PNG/JPEG/WebP bytes, or a normalised model input array [3, H, W]


def _call_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    # Plain metadata rather than call credentials: those need TLS, and a loopback
    # deployment with a token but no TLS is legitimate.
    return (("authorization", f"Bearer {token}"),) if token else None


def _health_status(response: wrappers_pb2.Int32Value) -> str:
    return _SERVING_STATUS.get(response.value, str(response.value))


def _health_stub(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        _HEALTH_CHECK,
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.Int32Value.FromString,
    )


class _Base:
    """What the sync and async clients share: the channel's stubs and each call's options."""

    def __init__(
        self, channel: grpc.Channel | grpc.aio.Channel, token: str | None, timeout: float | None
    ):
        self._channel = channel
        self._stub = pb_grpc.ExplainerStub(channel)
        self._health = _health_stub(channel)
        self._metadata = _call_metadata(token)
        self.timeout = timeout

    def _options(self, timeout: float | None) -> dict[str, Any]:
        """A call's deadline (default: the client's) and metadata (the token)."""
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self._metadata}


def _open_channel(api: Any, target: str, root_certificates: bytes | None) -> Any:
    """A channel of `api` (the grpc module or grpc.aio): TLS when root_certificates is given."""
    if root_certificates is None:
        return api.insecure_channel(target, options=CHANNEL_OPTIONS)
    return api.secure_channel(
        target, grpc.ssl_channel_credentials(root_certificates), options=CHANNEL_OPTIONS
    )


class ExplainerClient(_Base):
    """Blocking client on one gRPC channel; use as a context manager or call close().

    target: "host:port", or "dns:///name:port" to spread calls over every address of the name.
    token: sent as `authorization: Bearer <token>`. root_certificates: PEM bytes of the CA
    that signed the server's certificate; set, the channel uses TLS.
    timeout: default deadline in seconds for every call (None: no deadline).
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        root_certificates: bytes | None = None,
        timeout: float | None = None,
    ):
        super().__init__(_open_channel(grpc, target, root_certificates), token, timeout)

    def explain(
        self,
        image: Image,
        model: str,
        methods: Mapping[str, Any],
        targets: Targets | None = None,
        output: OutputOptions | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        **quality: Any,
    ) -> ExplainResult:
        """The prediction and every requested map in one response.

        methods: {registry name: params dataclass | {field: value} | None for the server's
        defaults}, in the order wanted. targets: default top-1. Maps come back as numpy
        float32 [H, W] (`output` chooses size, dtype on the wire, normalisation, overlays).
        quality (optional): evaluate=EvaluateOptions or {metrics, perturbation_steps,
        top_fraction, pointing_tolerance} (scores come back in `.quality`),
        ground_truth=(x_min, y_min, x_max, y_max) or a mask [H0, W0] in pixels of the image
        sent, policy=PolicyOptions (what it chose: `.policy`).
        """
        request = requests.explain_request_to_proto(
            model, image, methods, targets, output, request_id, **quality
        )
        response = self._stub.Explain(request, **self._options(timeout))
        return results.explain_response_from_proto(response)

    def sanity_check(
        self,
        image: Image,
        model: str,
        methods: Mapping[str, Any] | None = None,
        layers: Sequence[str] = (),
        randomizations: Sequence[str] = (),
        target: int | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> SanityCheckResult:
        """Model-randomisation check of one image on the server (default methods: vanilla,
        gradcam, guided_backprop; default layers: the model's checkpoints; both schedules)."""
        request = requests.sanity_request_to_proto(
            model, image, methods or {}, layers, randomizations, target, seed
        )
        response = self._stub.SanityCheck(request, **self._options(timeout))
        return results.sanity_response_from_proto(response)

    def explain_stream(
        self,
        image: Image,
        model: str,
        methods: Mapping[str, Any],
        targets: Targets | None = None,
        output: OutputOptions | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        **quality: Any,
    ) -> Iterator[Event]:
        """First an ExplainResult (prediction and fast maps), then an AttributionEvent per deep
        map as it completes, then a PolicyDecision and a QualityReport when asked for (see
        explain). Leaving the loop early cancels the call, so the server stops."""
        request = requests.explain_request_to_proto(
            model, image, methods, targets, output, request_id, **quality
        )
        call = self._stub.ExplainStream(request, **self._options(timeout))
        try:
            for event in call:
                yield results.explain_event_from_proto(event)
        finally:
            call.cancel()  # a no-op once the stream has finished

    def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        """Served models with their input specs and methods (parameters, defaults, limits)."""
        response = self._stub.ListModels(pb.ListModelsRequest(), **self._options(timeout))
        return list(response.models)

    def health(self, service: str = SERVICE_NAME, timeout: float | None = None) -> str:
        """grpc.health.v1 status of `service`: "SERVING", "NOT_SERVING", ..."""
        response = self._health(wrappers_pb2.StringValue(value=service), **self._options(timeout))
        return _health_status(response)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ExplainerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncExplainerClient(_Base):
    """The same API as ExplainerClient on a grpc.aio channel (create it inside the loop)."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        root_certificates: bytes | None = None,
        timeout: float | None = None,
    ):
        super().__init__(_open_channel(grpc.aio, target, root_certificates), token, timeout)

    async def explain(
        self,
        image: Image,
        model: str,
        methods: Mapping[str, Any],
        targets: Targets | None = None,
        output: OutputOptions | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        **quality: Any,
    ) -> ExplainResult:
        """See ExplainerClient.explain."""
        request = requests.explain_request_to_proto(
            model, image, methods, targets, output, request_id, **quality
        )
        response = await self._stub.Explain(request, **self._options(timeout))
        return results.explain_response_from_proto(response)

    async def sanity_check(
        self,
        image: Image,
        model: str,
        methods: Mapping[str, Any] | None = None,
        layers: Sequence[str] = (),
        randomizations: Sequence[str] = (),
        target: int | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> SanityCheckResult:
        """See ExplainerClient.sanity_check."""
        request = requests.sanity_request_to_proto(
            model, image, methods or {}, layers, randomizations, target, seed
        )
        response = await self._stub.SanityCheck(request, **self._options(timeout))
        return results.sanity_response_from_proto(response)

    async def explain_stream(
        self,
        image: Image,
        model: str,
        methods: Mapping[str, Any],
        targets: Targets | None = None,
        output: OutputOptions | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        **quality: Any,
    ) -> AsyncIterator[Event]:
        """See ExplainerClient.explain_stream."""
        request = requests.explain_request_to_proto(
            model, image, methods, targets, output, request_id, **quality
        )
        call = self._stub.ExplainStream(request, **self._options(timeout))
        try:
            async for event in call:
                yield results.explain_event_from_proto(event)
        finally:
            call.cancel()

    async def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        response = await self._stub.ListModels(pb.ListModelsRequest(), **self._options(timeout))
        return list(response.models)

    async def health(self, service: str = SERVICE_NAME, timeout: float | None = None) -> str:
        response = await self._health(
            wrappers_pb2.StringValue(value=service), **self._options(timeout)
        )
        return _health_status(response)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncExplainerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
