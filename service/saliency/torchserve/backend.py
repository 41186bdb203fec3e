"""The torchserve backend: the service's requests answered by TorchServe's workers.

Each model's archive is registered twice in TorchServe (model_store/, `make models`): `<m>` runs
the fast pass and `<m>-deep` the deep methods, each with its own batch size, batch delay and
workers (torchserve/handler.py; the work is in batch.py). For one request:

1. `<m>` gets the input tensor (already validated and normalised by the servicer), the targets
   and the fast methods, and answers predictions, resolved targets and fast maps: FastEvent.
2. `<m>-deep` gets the deep methods for those resolved classes: one DeepEvent per map. When the
   request names its classes, both calls go out at once.

Calls go over TorchServe's gRPC inference API with its inference key (key_file.json), the
request's deadline (as the gRPC timeout and, for the handler to drop expired rows between
chunks, in the row's `deadline_unix_ms`), its trace context (`traceparent` metadata and row key)
and its request id. Maps come back raw and the servicer applies the output options, so a
response equals the embedded backend's. TorchServe down, a worker dying, or a refused key is
UNAVAILABLE; TorchServe's job queue full (overload) is RESOURCE_EXHAUSTED. `healthy()` (polled by
server.py) turns the service's health NOT_SERVING while TorchServe cannot serve: dead, or
its workers not loaded; never because it is busy.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import time
import urllib.error
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import torch
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.propagate import inject

from saliency.attribution.fast import FastResult, fast_pass
from saliency.attribution.registry import make_params, split_by_kind
from saliency.attribution.types import Attribution, Targets
from saliency.codec import convert, method_params, tensors
from saliency.errors import DeadlineExceeded, ResourceExhausted, SaliencyError, Unavailable
from saliency.models import LoadedModel, get_spec, load_model, register_model_config
from saliency.runtime.admission import ESTIMATE_MARGIN, Admission, DeepCosts, overloaded
from saliency.runtime.backend import DeepEvent, ExplainJob, FastEvent, check_model
from saliency.runtime.config import ServiceConfig
from saliency.runtime.metrics import Metrics
from saliency.runtime.policy import CostTracker
from saliency.torchserve.batch import (
    DEADLINE_KEY,
    DEEP_SUFFIX,
    OK,
    TRACEPARENT_KEY,
    error_for,
)
from saliency.torchserve.process import (
    KeyFile,
    TorchServeProcess,
    describe,
    workers_ready,
)
from saliency.torchserve_api import inference_pb2 as ts_pb
from saliency.torchserve_api import inference_pb2_grpc as ts_grpc
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import torchserve_pb2 as reply_pb

log = logging.getLogger(__name__)

BACKEND = "torchserve"
HEALTH_TIMEOUT_S = 2.0  # one Ping or management call of the health probe
# TorchServe answers no Ping for this long (each probe timing out) before health gives up on
# it. Shorter stalls are load (a saturated host, a long GC pause) and keep the last verdict.
HEALTH_GRACE_S = 30.0
_KEY_REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
# What TorchServe 0.12 says, as gRPC INTERNAL, when a registration's job queue is full
# (job_queue_size, 100 by default; ModelManager.addJob): the same words as for a model with no
# worker at all, so the workers' state (from the health probe) tells the two apart. REST says
# it as HTTP 503 ServiceUnavailableException.
_QUEUE_FULL_TEXT = "has no worker to serve inference request"


class TorchServeBackend:
    """Forwards ExplainJobs to TorchServe: one it starts, or one at `torchserve_address`."""

    name = BACKEND
    features: frozenset[str] = frozenset()  # no evaluate / policy / sanity_check (embedded only)

    def __init__(self, config: ServiceConfig, metrics: Metrics, tracer: trace.Tracer):
        self.config = config
        self.metrics = metrics
        self.tracer = tracer
        for path in config.model_configs:  # user models, served under their configs' names
            register_model_config(path)
        self.models = {name: get_spec(name) for name in config.models}
        self.process: TorchServeProcess | None = None
        if config.torchserve_address:
            # Attach: TorchServe may still be starting (a sidecar); health says when it serves.
            if not config.torchserve_key_file:
                raise ValueError("config torchserve_key_file: set it with torchserve_address (TorchServe's key_file.json)")
            self.address = config.torchserve_address
            self.keys = KeyFile(Path(config.torchserve_key_file), config.torchserve_management_address)
        else:
            self.process = TorchServeProcess.start(
                config.torchserve_model_store,
                config.torchserve_config,
                config.models,
                config.torchserve_startup_timeout_s,
                model_configs=config.model_configs,
            )
            atexit.register(self.process.stop)  # never leave a TorchServe behind
            self.address = self.process.grpc_address
            self.keys = KeyFile(self.process.key_file, self.process.management_address)
        self._warned_management = False
        self._failures = 0  # calls that failed for TorchServe's sake (not the request's)
        self._failures_seen = 0  # ... as of the last health probe
        self.health_grace_s = HEALTH_GRACE_S
        self._serving = False  # the last verdict the probe could reach
        self._unsure_since: float | None = None  # since when the probe gets no answer in time
        self._workers_ok: bool | None = None  # every registration's workers READY, last we knew
        self._key_lock = asyncio.Lock()  # one key refresh at a time (renewal revokes the old key)
        self._queue_sizes: dict[str, int] = {}  # registration -> its job queue's capacity
        self._channel: grpc.aio.Channel | None = None
        self._stub: ts_grpc.InferenceAPIsServiceStub | None = None
        # Admission: deep samples sent to TorchServe and not answered yet, at the costs its
        # replies show (before the first reply, a prediction pass timed here stands in).
        self._deep_costs = DeepCosts()
        self._costs = {name: CostTracker() for name in self.models}
        self._deep_in_flight = dict.fromkeys(self.models, 0)
        for name in self.models:
            seconds = _time_a_prediction(load_model(name))
            self._costs[name].observe_fast(seconds)
            self._costs[name].reset_samples(seconds, 1)  # a chunked sample costs less than this
        log.info("torchserve backend: %s for %s", self.address, ", ".join(self.models))

    # ---- the Backend interface ---------------------------------------------------------------

    async def admit(self, job: ExplainJob, timeout: float) -> Admission:
        """Refuse at once (RESOURCE_EXHAUSTED, with the estimate) a request that the deep samples
        in flight to TorchServe would keep past `timeout`; otherwise count its own in flight
        until it ends. TorchServe's own queue bound still applies (`_overloaded`)."""
        check_model(self, job.model)
        _, deep = split_by_kind(job.methods)
        samples, deep_bytes = await self._deep_costs.of(load_model(job.model), job.targets, deep, job.policy)
        costs = self._costs[job.model]  # no await from here on: estimate and count are one step
        ahead = self._deep_in_flight[job.model] + samples if samples else 0
        estimate = ESTIMATE_MARGIN * (costs.fast_seconds + ahead * costs.sample_seconds)
        if estimate > timeout:
            self.metrics.rejected.labels(job.model, "overloaded").inc()
            raise overloaded(job.model, estimate, timeout, samples)
        self._deep_in_flight[job.model] += samples

        def release() -> None:
            self._deep_in_flight[job.model] -= samples

        admission = Admission(samples, deep_bytes)
        admission.until_closed(release)
        return admission

    async def explain(self, job: ExplainJob, timeout: float) -> AsyncIterator[FastEvent | DeepEvent]:
        """Yield the FastEvent from `<m>`, then one DeepEvent per map from `<m>-deep`."""
        check_model(self, job.model)
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        fast, deep = split_by_kind(job.methods)
        deep_call: asyncio.Task | None = None
        try:
            if deep and job.targets.classes:  # the classes are known: no need to wait for the fast pass
                deep_call = asyncio.ensure_future(self._deep(job, deep, job.targets.classes, deadline))
            reply = await self._predict(job.model, self._request(job, fast, job.targets), deadline, "the fast pass")
            result = _fast_result(reply)
            # The handler's own time: the wall time of a first call includes TorchServe's warm-up.
            self._costs[job.model].observe_fast(reply.handler_ms / 1000)
            yield FastEvent(result, time.perf_counter() - started)
            if not deep:
                return
            if deep_call is None:
                deep_call = asyncio.ensure_future(self._deep(job, deep, result.targets, deadline))
            events = await deep_call
            self._costs[job.model].observe_samples(
                sum(e.compute_seconds for e in events), int(sum(e.attribution.stats.get("samples", 0) for e in events))
            )
            for event in events:
                yield event
        finally:
            if deep_call is not None:
                if not deep_call.done():
                    deep_call.cancel()
                elif not deep_call.cancelled():
                    deep_call.exception()  # retrieved: its error (if any) was superseded

    async def healthy(self) -> bool:
        """Whether TorchServe can serve: it runs, answers Ping with "Healthy", and every
        registration's workers have their model loaded (a worker being restarted is not); also
        renews the inference key when it is about to expire.

        Busy is not unhealthy: a call refused because TorchServe's queue is full does not count,
        and a Ping or management call that times out (a saturated host) keeps the last verdict
        for up to `health_grace_s`. A call that failed for TorchServe's sake since the last probe
        makes this probe False whatever TorchServe says now: a worker that died and came back
        between two probes is still reported (for one poll).
        """
        failed, self._failures_seen = self._failures != self._failures_seen, self._failures
        if failed or (self.process is not None and not self.process.alive()):
            return self._verdict(False)
        try:
            key = self.keys.inference_key()
        except (OSError, ValueError, KeyError):
            return self._verdict(False)
        try:
            reply = await self._stub_now().Ping(
                empty_pb2.Empty(), metadata=[("authorization", f"Bearer {key}")], timeout=HEALTH_TIMEOUT_S
            )
            status = json.loads(reply.health).get("status")
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return self._unsure("Ping")
            if exc.code() in _KEY_REFUSED:
                self.keys.reload()
            return self._verdict(False)
        except ValueError:
            return self._verdict(False)
        if status != "Healthy":
            return self._verdict(False)
        if self.keys.renewal_due():
            await asyncio.to_thread(self.keys.renew_if_due)
        ready = await asyncio.to_thread(self._workers_ready)
        return self._unsure("the management API") if ready is None else self._verdict(ready)

    def _verdict(self, serving: bool) -> bool:
        self._serving, self._unsure_since = serving, None
        return serving

    def _unsure(self, what: str) -> bool:
        """No answer in time: the last verdict stands until TorchServe has been silent for
        health_grace_s."""
        now = time.monotonic()
        if self._unsure_since is None:
            self._unsure_since = now
        silent = now - self._unsure_since
        if silent < self.health_grace_s:
            return self._serving
        log.warning("TorchServe's %s has not answered within %.0f s for %.0f s", what, HEALTH_TIMEOUT_S, silent)
        return False

    def _workers_ready(self) -> bool | None:
        """Every `<m>` and `<m>-deep` has its workers READY, per the management API; None when
        it did not answer in time. Blocking.

        When the management API cannot be reached (attach mode, another address) this check is
        skipped with a warning, and Ping alone decides.
        """
        try:
            key = self.keys.management_key()
            for model in self.models:
                for name in (model, model + DEEP_SUFFIX):
                    description = describe(self.keys.management_address, key, name, timeout=HEALTH_TIMEOUT_S)
                    queue = description.get("jobQueueStatus") or {}
                    if "remainingCapacity" in queue:  # job_queue_size, for the overload message
                        self._queue_sizes[name] = int(queue["remainingCapacity"]) + int(queue.get("pendingRequests", 0))
                    if not workers_ready(description):
                        self._workers_ok = False
                        return False
        except urllib.error.HTTPError as exc:  # e.g. 404: a registration is missing
            log.warning("TorchServe's management API: %s", exc)
            self._workers_ok = False
            return False
        except TimeoutError:
            return None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                return None
            self._warn_management(exc)
        except (OSError, ValueError, KeyError) as exc:
            self._warn_management(exc)
        self._workers_ok = True
        return True

    def _warn_management(self, exc: Exception) -> None:
        if not self._warned_management:
            log.warning("cannot check TorchServe's workers at %s (%s); health relies on Ping",
                        self.keys.management_address, exc)
            self._warned_management = True

    def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            try:
                asyncio.get_running_loop().create_task(channel.close())
            except RuntimeError:
                pass  # no loop any more: the channel goes with the process
        if self.process is not None:
            self.process.stop()
            atexit.unregister(self.process.stop)

    # ---- calls ---------------------------------------------------------------------------------

    def _stub_now(self) -> ts_grpc.InferenceAPIsServiceStub:
        """The stub, on a channel made on the running event loop at first use."""
        if self._stub is None or self._channel is None:
            size = self.config.max_message_bytes
            self._channel = grpc.aio.insecure_channel(
                self.address,
                options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)],
            )
            self._stub = ts_grpc.InferenceAPIsServiceStub(self._channel)
        return self._stub

    async def _deep(
        self, job: ExplainJob, methods: Mapping[str, Any], classes: tuple[int, ...], deadline: float
    ) -> list[DeepEvent]:
        """The deep maps for `classes`, from `<m>-deep`; queue time includes TorchServe's."""
        sent = time.perf_counter()
        request = self._request(job, methods, Targets(classes=tuple(classes)))
        reply = await self._predict(job.model + DEEP_SUFFIX, request, deadline, "the deep methods")
        # Before the handler started on its batch: TorchServe's queue, batch delay, transport.
        outside = max(time.perf_counter() - sent - reply.handler_ms / 1000, 0.0)
        return [
            DeepEvent(_attribution(m), outside + m.queue_ms / 1000, m.compute_ms / 1000)
            for m in reply.response.attributions
        ]

    def _request(self, job: ExplainJob, methods: Mapping[str, Any], targets: Targets) -> pb.ExplainRequest:
        """What one registration gets: the validated input as a tensor, raw float32 maps out."""
        return pb.ExplainRequest(
            model=job.model,
            tensor=tensors.tensor_to_proto(job.x),
            targets=convert.targets_to_proto(targets),
            methods=method_params.method_requests_to_proto(methods),
            output=pb.OutputOptions(
                map_dtype=pb.DTYPE_FLOAT32, normalization=pb.NORMALIZATION_NONE, top_predictions=job.n_predictions
            ),
            request_id=job.request_id,
        )

    async def _predict(
        self, registration: str, request: pb.ExplainRequest, deadline: float, what: str
    ) -> reply_pb.HandlerReply:
        """One Predictions call with key, deadline and trace context; the row's reply, or its
        status as a SaliencyError. A refused key is re-read (TorchServe rotated it) once."""
        for attempt in (1, 2):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"the deadline passed before {what} could be sent to TorchServe")
            attributes = {"rpc.system": "grpc", "torchserve.model": registration, "saliency.request_id": request.request_id}
            with self.tracer.start_as_current_span(
                f"torchserve {registration}", kind=trace.SpanKind.CLIENT, attributes=attributes
            ) as span:
                carrier: dict[str, str] = {}
                inject(carrier)  # this span's context: TorchServe's handler logs it per row
                try:
                    key = self.keys.inference_key()
                except (OSError, ValueError, KeyError) as exc:
                    raise Unavailable(f"TorchServe's key file {self.keys.path} cannot be read ({exc})") from None
                inputs = {
                    "body": request.SerializeToString(),
                    DEADLINE_KEY: str(int((time.time() + remaining) * 1000)).encode(),
                    TRACEPARENT_KEY: carrier.get("traceparent", "").encode(),
                }
                metadata = [("authorization", f"Bearer {key}"), ("x-request-id", request.request_id)]
                metadata += [(k.lower(), v) for k, v in carrier.items()]
                try:
                    response = await self._stub_now().Predictions(
                        ts_pb.PredictionsRequest(model_name=registration, input=inputs),
                        timeout=remaining,
                        metadata=metadata,
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in _KEY_REFUSED and attempt == 1 and await self._refresh_key(key):
                        continue
                    error = self._error(exc, request.model, registration, what)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
                    raise error from None
                try:
                    reply = reply_pb.HandlerReply.FromString(response.prediction)
                except DecodeError:
                    raise Unavailable(f"TorchServe's {registration} answered something that is not a HandlerReply") from None
                span.set_attribute("torchserve.batch_rows", reply.batch_rows)
                span.set_attribute("torchserve.handler_ms", reply.handler_ms)
                if reply.code != OK:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, reply.message))
                    raise error_for(reply.code, reply.message)
                return reply
        raise AssertionError("unreachable")

    async def _refresh_key(self, refused: str) -> bool:
        """After TorchServe refused the key `refused`: True when there is another to try.

        One refresh at a time: of many calls refused together, the first re-reads the key file,
        else renews the key; the others find the key changed and retry with it. Each renewing on
        its own would revoke the key the previous one had just fetched.
        """
        async with self._key_lock:
            self.keys.reload()
            try:
                if self.keys.inference_key() != refused:
                    return True
            except (OSError, ValueError, KeyError):
                return False
            return await asyncio.to_thread(self.keys.renew_if_due)

    def _error(self, exc: grpc.aio.AioRpcError, model: str, registration: str, what: str) -> SaliencyError:
        code = exc.code()
        details = (exc.details() or "").splitlines()[0] if exc.details() else code.name
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"the deadline passed while TorchServe computed {what}")
        if code == grpc.StatusCode.INTERNAL and _QUEUE_FULL_TEXT in details and self._workers_ok is not False:
            # Overload, not a failure: TorchServe is fine and health stays SERVING.
            self.metrics.rejected.labels(model, "overloaded").inc()
            size = self._queue_sizes.get(registration)
            size = f"{size} requests" if size else "its job_queue_size"
            return ResourceExhausted(
                f"TorchServe's queue for {registration} is full ({size} waiting); retry later or send "
                "fewer requests at once (more TorchServe workers, or a longer job_queue_size in its "
                "config.properties, raise this limit)"
            )
        self.metrics.rejected.labels(model, "backend_unavailable").inc()
        self._failures += 1
        if code == grpc.StatusCode.UNAVAILABLE:
            message = f"TorchServe at {self.address} cannot be reached ({details}); retry later"
        elif code in _KEY_REFUSED:
            message = f"TorchServe refused the inference key from {self.keys.path} ({details})"
        else:  # e.g. "Worker died." (the worker is being restarted), "Model not found"
            message = f"TorchServe could not run {registration} ({code.name}: {details}); retry later"
        log.warning("%s", message)
        return Unavailable(message)

def _time_a_prediction(model: LoadedModel) -> float:
    """Seconds of one prediction pass of `model` here: admission's cost until replies show
    TorchServe's own (its workers are slower on a busy host, never faster than the first guess
    by much, and the estimate's margin covers the rest)."""
    x = torch.zeros(1, 3, *model.spec.input_size)
    methods = {"vanilla": make_params("vanilla")}
    fast_pass(model, x, [Targets()], methods, 1)  # the first pays for lazy initialisation
    started = time.perf_counter()
    fast_pass(model, x, [Targets()], methods, 1)
    return time.perf_counter() - started


def _fast_result(reply: reply_pb.HandlerReply) -> FastResult:
    response = reply.response
    logits = (
        tensors.tensor_from_proto(reply.logits, "logits", tensors.MAX_MAP_ELEMENTS)
        if reply.HasField("logits")
        else torch.empty(0)
    )
    return FastResult(
        logits,
        convert.predictions_from_proto(response.predictions),
        tuple(response.targets),
        [_attribution(m) for m in response.attributions],
    )


def _attribution(message: pb.Attribution) -> Attribution:
    """A map as the handler computed it (its stats as they were: no timing folded in)."""
    return Attribution(
        method=method_params.METHOD_NAMES[message.method],
        target=message.target,
        map=tensors.tensor_from_proto(message.map, "attribution.map", tensors.MAX_MAP_ELEMENTS),
        stats=dict(message.stats),
    )
