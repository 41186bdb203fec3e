"""Locust load test for the saliency service: gRPC users, and HTTP/JSON users beside them.

    locust -f deploy/loadtest/locustfile.py --headless -u 8 -r 8 -t 60s --host 127.0.0.1:50051
    saliency loadtest --server 127.0.0.1:50051 --users 8 --duration 60s   # same, plus a chart
    saliency loadtest --server 127.0.0.1:50051 --http http://127.0.0.1:8080   # both APIs

Follows locust's documented gRPC pattern: grpc is switched to gevent, each user opens one sync
channel in on_start, and a client interceptor fires `environment.events.request` for every
call. Request names (one row each in locust's statistics):

    Explain fast            gradcam + vanilla (the fast pass only)
    Explain fast+ig32       gradcam + vanilla + Integrated Gradients, n_steps 32
    ExplainStream first     time to the first event (prediction and fast maps)
    ExplainStream ig        time from the call until the IG map arrives
    ExplainStream smoothgrad  time from the call until the SmoothGrad map arrives
    ExplainStream complete  the whole stream

Each user picks its next request at random with weights 6 : 3 : 1 (fast : fast+ig32 :
stream), then waits a think time. With SALIENCY_LOADTEST_HTTP set, `HttpExplainerUser` runs
the same mix over the HTTP/JSON API (docs/http.md) as requests named "HTTP explain fast",
"HTTP explain fast+ig32", "HTTP explainStream first", "HTTP explainStream deep map" and
"HTTP explainStream complete"; locust divides the users between the two classes. Environment:

    SALIENCY_LOADTEST_MODEL   model name (default efficientnet_lite0)
    SALIENCY_LOADTEST_HTTP    base URL of the HTTP API, e.g. http://127.0.0.1:8080 (unset: gRPC only)
    SALIENCY_LOADTEST_WAIT    think time "MIN,MAX" seconds (default 0.2,1.0)
    SALIENCY_TOKEN            bearer token, sent as `authorization: Bearer ...`
    SALIENCY_TLS_CA           PEM file: connect with TLS, trusting this CA
"""

from __future__ import annotations

import io
import os
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
import locust.stats
import skimage.data
from google.protobuf import json_format
from locust import HttpUser, User, between, task
from locust.env import Environment
from PIL import Image

from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc

# grpc must cooperate with gevent's event loop before any channel exists.
grpc_gevent.init_gevent()
# Flush --csv history every second (default 10 s): `saliency loadtest` reads it for progress.
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1

NAME_KEY = "x-loadtest-name"  # per-call request name, removed before the call leaves
MODEL = os.environ.get("SALIENCY_LOADTEST_MODEL", "efficientnet_lite0")
DEFAULT_HOST = "127.0.0.1:50051"
_WAIT = os.environ.get("SALIENCY_LOADTEST_WAIT", "0.2,1.0")
WAIT_MIN, WAIT_MAX = (float(part) for part in _WAIT.split(","))
MAX_MESSAGE = 64 << 20
HTTP_HOST = os.environ.get("SALIENCY_LOADTEST_HTTP", "")


def _chelsea_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGE = _chelsea_png()  # encoded once; every request sends the same photograph

FAST = [pb.MethodRequest(method=pb.METHOD_GRADCAM), pb.MethodRequest(method=pb.METHOD_VANILLA)]
IG32 = pb.MethodRequest(
    method=pb.METHOD_INTEGRATED_GRADIENTS,
    integrated_gradients=pb.IntegratedGradientsParams(n_steps=32),
)
SMOOTHGRAD16 = pb.MethodRequest(
    method=pb.METHOD_SMOOTHGRAD, smoothgrad=pb.SmoothGradParams(n_samples=16, seed=0)
)
METHOD_NAMES = {pb.METHOD_INTEGRATED_GRADIENTS: "ig", pb.METHOD_SMOOTHGRAD: "smoothgrad"}


def explain_request(methods: list[pb.MethodRequest]) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model=MODEL, image=IMAGE, targets=pb.Targets(top_k=1), methods=methods
    )


class _CallDetails(
    namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Reports every call to locust: unary calls as one request; a stream as its first event,
    each deep map (named after its method) and the complete stream."""

    def __init__(self, environment: Environment):
        self.env = environment

    def _fire(self, name: str, started: float, length: int = 0, exc: BaseException | None = None):
        self.env.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            response=None,
            context=None,
            exception=exc,
        )

    @staticmethod
    def _named(details: grpc.ClientCallDetails) -> tuple[str, _CallDetails]:
        metadata = list(details.metadata or ())
        name = next((v for k, v in metadata if k == NAME_KEY), details.method)
        rest = [(k, v) for k, v in metadata if k != NAME_KEY]
        return name, _CallDetails(
            details.method, details.timeout, rest, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable, details, request):
        name, details = self._named(details)
        started = time.perf_counter()
        outcome = continuation(details, request)
        try:  # the outcome holds the response or the RpcError
            self._fire(name, started, outcome.result().ByteSize())
        except grpc.RpcError as exc:
            self._fire(name, started, exc=exc)
        return outcome

    def intercept_unary_stream(self, continuation: Callable, details, request):
        name, details = self._named(details)
        started = time.perf_counter()
        return self._timed_stream(name, started, continuation(details, request))

    def _timed_stream(self, name: str, started: float, responses: Iterator[Any]) -> Iterator[Any]:
        total = 0
        first = True
        try:
            for event in responses:
                size = event.ByteSize()
                total += size
                if first:
                    self._fire(f"{name} first", started, size)
                    first = False
                elif event.WhichOneof("event") == "attribution":
                    method = METHOD_NAMES.get(event.attribution.method, str(event.attribution.method))
                    self._fire(f"{name} {method}", started, size)
                yield event
        except grpc.RpcError as exc:
            self._fire(f"{name} complete", started, total, exc)
            raise
        self._fire(f"{name} complete", started, total)


class ExplainerUser(User):
    """One client: a channel of its own, a realistic mix of fast and deep requests."""

    host = DEFAULT_HOST
    wait_time = between(WAIT_MIN, WAIT_MAX)

    def on_start(self) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        target = self.host or DEFAULT_HOST
        ca_file = os.environ.get("SALIENCY_TLS_CA")
        if ca_file:
            with open(ca_file, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        channel = grpc.intercept_channel(self._channel, LocustInterceptor(self.environment))
        self.stub = pb_grpc.ExplainerStub(channel)
        token = os.environ.get("SALIENCY_TOKEN")
        self.auth = [("authorization", f"Bearer {token}")] if token else []

    def on_stop(self) -> None:
        self._channel.close()

    def _metadata(self, name: str) -> list[tuple[str, str]]:
        return [*self.auth, (NAME_KEY, name)]

    @task(6)
    def explain_fast(self) -> None:
        try:
            self.stub.Explain(explain_request(FAST), metadata=self._metadata("Explain fast"), timeout=30)
        except grpc.RpcError:
            pass  # already reported as a failure by the interceptor

    @task(3)
    def explain_fast_ig(self) -> None:
        try:
            self.stub.Explain(
                explain_request([*FAST, IG32]), metadata=self._metadata("Explain fast+ig32"), timeout=60
            )
        except grpc.RpcError:
            pass

    @task(1)
    def explain_stream_deep(self) -> None:
        request = explain_request([*FAST, IG32, SMOOTHGRAD16])
        try:
            for _event in self.stub.ExplainStream(
                request, metadata=self._metadata("ExplainStream"), timeout=120
            ):
                pass
        except grpc.RpcError:
            pass


def _json_body(methods: list[pb.MethodRequest]) -> bytes:
    return json_format.MessageToJson(explain_request(methods), indent=None).encode()


class HttpExplainerUser(HttpUser):
    """The same mix over the HTTP/JSON API: JSON bodies (base64 image), the SSE stream read as
    it arrives. Runs only when SALIENCY_LOADTEST_HTTP names the API's base URL."""

    abstract = not HTTP_HOST
    host = HTTP_HOST or None
    wait_time = between(WAIT_MIN, WAIT_MAX)
    bodies = {}

    def on_start(self) -> None:
        token = os.environ.get("SALIENCY_TOKEN")
        if token:
            self.client.headers["authorization"] = f"Bearer {token}"
        self.client.headers["content-type"] = "application/json"
        ca_file = os.environ.get("SALIENCY_TLS_CA")
        if ca_file:
            self.client.verify = ca_file
        if not HttpExplainerUser.bodies:  # encoded once per process
            HttpExplainerUser.bodies = {
                "fast": _json_body(FAST), "fast+ig32": _json_body([*FAST, IG32]),
                "stream": _json_body([*FAST, IG32, SMOOTHGRAD16]),
            }

    def _fire(self, name: str, started: float, length: int = 0, exc: BaseException | None = None) -> None:
        self.environment.events.request.fire(
            request_type="http", name=name, response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length, response=None, context=None, exception=exc,
        )

    def _explain(self, body: str, name: str, timeout: float) -> None:
        # Absolute URLs: locust's --host is the gRPC address, shared by every user class.
        with self.client.post(f"{HTTP_HOST}/v1/models/{MODEL}:explain", data=self.bodies[body], name=name,
                              timeout=timeout, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(6)
    def explain_fast(self) -> None:
        self._explain("fast", "HTTP explain fast", 30)

    @task(3)
    def explain_fast_ig(self) -> None:
        self._explain("fast+ig32", "HTTP explain fast+ig32", 60)

    @task(1)
    def explain_stream_deep(self) -> None:
        started, total, event, first = time.perf_counter(), 0, None, True
        try:
            with self.client.post(f"{HTTP_HOST}/v1/models/{MODEL}:explainStream", data=self.bodies["stream"],
                                  stream=True, name="HTTP explainStream headers", timeout=120,
                                  catch_response=True) as response:
                if response.status_code != 200:
                    # Counted once, under the headers: the stream never started.
                    response.failure(f"{response.status_code}: {response.text[:200]}")
                    return
                response.success()
                for line in response.iter_lines():
                    total += len(line)
                    if line.startswith(b"event: "):
                        event = line[len(b"event: "):].decode()
                        if event == "error":
                            raise RuntimeError("the stream ended with an error event")
                    elif line.startswith(b"data: ") and first:
                        self._fire("HTTP explainStream first", started, len(line))
                        first = False
                    elif line.startswith(b"data: ") and event == "attribution":
                        self._fire("HTTP explainStream deep map", started, len(line))
        except Exception as exc:  # reported to locust, the user goes on
            self._fire("HTTP explainStream complete", started, total, exc)
            return
        self._fire("HTTP explainStream complete", started, total)
