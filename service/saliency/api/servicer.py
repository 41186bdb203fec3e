"""The saliency.v1.Explainer servicer: protobuf in, domain calls, protobuf out.

Validation happens here, before any work is queued; errors map to status codes in one place
(`status_for`). A bad request never reaches a worker and never affects another request.

The transport-neutral core (`explain`, `explain_stream`, `list_models`) takes a `CallContext`:
gRPC's ServicerContext through `GrpcCall`, or the HTTP API's (saliency/http/app.py), so both
APIs share one path of validation, admission, deadlines, memory budget, metrics and spans.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from typing import NoReturn, Protocol

import grpc
from opentelemetry import trace
from opentelemetry.propagate import extract

from saliency.attribution.registry import get_method
from saliency.codec import convert, quality_codec, tensors
from saliency.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    SaliencyError,
    status_of,
)
from saliency.imaging import ImageLimits
from saliency.runtime.admission import Admission, MemoryBudget, maps_in_response, request_bytes
from saliency.runtime.backend import (
    EVALUATE,
    POLICY,
    SANITY_CHECK,
    Backend,
    DeepEvent,
    Event,
    ExplainJob,
    FastEvent,
    PolicyEvent,
    QualityEvent,
    SanityJob,
    check_model,
    require_feature,
)
from saliency.runtime.config import ServiceConfig
from saliency.runtime.metrics import Metrics
from saliency.runtime.telemetry import observed_explain
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
DEADLINE_MARGIN_S = 0.05

# Status messages travel in a trailer: one that quotes a megabyte of the request back would
# exceed the client's metadata limit, and the caller would see "Stream removed" instead.
MAX_STATUS_MESSAGE = 1024


def status_message(text: str) -> str:
    return text if len(text) <= MAX_STATUS_MESSAGE else text[: MAX_STATUS_MESSAGE - 1] + "…"


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code of an error: a SaliencyError's own, INTERNAL for anything else."""
    return grpc.StatusCode[status_of(exc)]


class CallContext(Protocol):
    """What the core needs of a call, whatever carries it."""

    span_prefix: str  # the span is named span_prefix + rpc

    def metadata(self) -> Mapping[str, str]:
        """Request headers (trace context among them)."""

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline; None without one."""

    def cancelled(self) -> bool:
        """The caller went away."""

    async def abort(self, code: grpc.StatusCode, message: str, field: str | None) -> NoReturn:
        """End the call with `code`; raises."""


class GrpcCall:
    """A grpc.aio ServicerContext as a CallContext."""

    span_prefix = "saliency.v1.Explainer/"

    def __init__(self, context: grpc.aio.ServicerContext):
        self.context = context

    def metadata(self) -> Mapping[str, str]:
        return dict(self.context.invocation_metadata() or ())

    def time_remaining(self) -> float | None:
        return self.context.time_remaining()

    def cancelled(self) -> bool:
        return self.context.cancelled()

    async def abort(self, code: grpc.StatusCode, message: str, field: str | None) -> NoReturn:
        await self.context.abort(code, message)


class CallAborted(Exception):
    """How a non-gRPC CallContext's `abort` ends a call: the status its transport answers."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def in_listed_order(response: pb.ExplainResponse, n_fast: int, request: pb.ExplainRequest) -> None:
    """A unary answer's maps in one order, whatever order they were computed in: the fast maps
    as the fast pass lists them (its first `n_fast`), then the deep maps method by method in
    request order, each method's targets in `response.targets` order. Deep maps arrive as they
    complete, and several finishing in one chunk arrive in no set order, so a unary answer
    sorts them. A policy's fallback map (a method not requested) keeps its place right after
    the fast maps, in the order its pass made it."""
    method_rank = {m.method: i for i, m in enumerate(request.methods)}
    target_rank = {t: i for i, t in enumerate(response.targets)}

    def rank(indexed: tuple[int, pb.Attribution]) -> tuple[int, ...]:
        i, a = indexed
        if i < n_fast:
            return (0, i)
        if a.method not in method_rank:
            return (1, -1, 0, i)
        return (1, method_rank[a.method], target_rank.get(a.target, len(target_rank)), i)

    if len(response.attributions) - n_fast > 1:
        # (method, target) names one map of an answer; sort is stable should two share it.
        ranks = {(a.method, a.target): rank((i, a)) for i, a in enumerate(response.attributions)}
        response.attributions.sort(key=lambda a: ranks[(a.method, a.target)])


class ExplainerServicer(pb_grpc.ExplainerServicer):
    def __init__(self, backend: Backend, config: ServiceConfig, metrics: Metrics, tracer: trace.Tracer):
        self.backend = backend
        self.config = config
        self.metrics = metrics
        self.tracer = tracer
        self.image_limits = ImageLimits(config.max_image_bytes, config.max_image_pixels)
        self.memory = MemoryBudget(config.max_inflight_bytes)
        # Decoding, resizing and rendering: bounded, and never on the event loop.
        self._pool = ThreadPoolExecutor(config.prepare_workers, thread_name_prefix="prepare")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        return await self.explain(request, GrpcCall(context))

    async def ExplainStream(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext):
        async with aclosing(self.explain_stream(request, GrpcCall(context))) as events:
            async for event in events:
                yield event

    async def SanityCheck(
        self, request: pb.SanityCheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.SanityCheckResponse:
        call = GrpcCall(context)
        async with self._rpc("SanityCheck", request, call, self._prepare_sanity_off_loop) as job:
            outcome = await self.backend.sanity_check(job, self._timeout(call))
            return quality_codec.sanity_response_to_proto(outcome)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return self.list_models()

    # ---- the transport-neutral core ------------------------------------------------------------

    async def explain(self, request: pb.ExplainRequest, call: CallContext, rpc: str = "Explain") -> pb.ExplainResponse:
        """Prediction and every map in one response; errors end the call through `call.abort`."""
        async with self._rpc(rpc, request, call) as prepared:
            job, options, rgb = prepared
            response = pb.ExplainResponse(model=job.model, request_id=job.request_id)
            n_fast = 0
            # aclosing: a cancelled call closes the flow at once, dropping its queued deep work.
            async with aclosing(self._backend_events(job, call)) as events:
                async for event in events:
                    await self._off_loop(self._add_event, response, event, options, rgb)
                    if isinstance(event, FastEvent):
                        n_fast = len(response.attributions)
            in_listed_order(response, n_fast, request)
            return response

    async def explain_stream(
        self, request: pb.ExplainRequest, call: CallContext, rpc: str = "ExplainStream"
    ) -> AsyncIterator[pb.ExplainEvent]:
        """The prediction and fast maps first, then each deep map, policy and quality."""
        async with self._rpc(rpc, request, call, self._prepare_stream) as prepared:
            job, options, rgb = prepared
            async with aclosing(self._backend_events(job, call)) as events:
                async for event in events:
                    if isinstance(event, FastEvent):
                        first = pb.ExplainResponse(model=job.model, request_id=job.request_id)
                        await self._off_loop(self._add_event, first, event, options, rgb)
                        yield pb.ExplainEvent(prediction=first)
                    elif isinstance(event, PolicyEvent):
                        yield pb.ExplainEvent(policy=quality_codec.policy_decision_to_proto(event.decision))
                    elif isinstance(event, QualityEvent):
                        scores = [quality_codec.quality_score_to_proto(s) for s in event.scores]
                        yield pb.ExplainEvent(quality=pb.QualityReport(scores=scores))
                    else:
                        attribution = await self._off_loop(self._deep_proto, event, options, rgb)
                        yield pb.ExplainEvent(attribution=attribution)

    def _backend_events(self, job: ExplainJob, call: CallContext) -> AsyncIterator[Event]:
        """The backend's events for `job`, with the request's telemetry recorded once here."""
        return observed_explain(self.backend, job, self._timeout(call), self.metrics, self.tracer)

    def list_models(self, rpc: str = "ListModels") -> pb.ListModelsResponse:
        self.metrics.requests.labels(rpc, "", "OK").inc()
        return pb.ListModelsResponse(
            models=[convert.model_info_to_proto(spec, self.config.limits) for spec in self.backend.models.values()]
        )

    async def off_loop(self, function, *args):
        """Run `function(*args)` on the prepare pool (bounded threads, never the event loop)."""
        return await self._off_loop(function, *args)

    # ---- helpers -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _rpc(self, rpc: str, request, call: CallContext, prepare=None):
        """Span, validation and admission (`prepare`, default: an Explain request's), metrics
        and error mapping around one call that names a model."""
        model_label = request.model if request.model in self.backend.models else ""
        parent = extract(dict(call.metadata()))
        code = grpc.StatusCode.OK
        admission = None
        reached_backend = False  # from then on the backend counts how the call ended
        # Status and exceptions are recorded below; the SDK's own recording formats a traceback
        # (a stat per frame) on the event loop for every refused call.
        with self.tracer.start_as_current_span(
            call.span_prefix + rpc, context=parent, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                prepared = await (prepare or self._prepare)(request, call)
                job = prepared[0] if isinstance(prepared, tuple) else prepared
                admission = getattr(job, "admission", None)
                if getattr(job, "request_id", None):
                    span.set_attribute("saliency.request_id", job.request_id)
                span.set_attribute("saliency.model", job.model)
                reached_backend = True
                yield prepared
            except SaliencyError as exc:
                code = status_for(exc)
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    self.metrics.rejected.labels(model_label, "invalid_argument").inc()
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                await call.abort(code, status_message(str(exc)), exc.field)
            except (grpc.aio.AbortError, CallAborted):
                raise
            except asyncio.CancelledError:
                # gRPC cancels the handler when the client's deadline passes or it goes away.
                remaining = call.time_remaining()
                late = remaining is not None and remaining <= DEADLINE_MARGIN_S
                code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
                if not reached_backend:  # it ended while being validated, admitted or decoded
                    self.metrics.rejected.labels(model_label, "deadline" if late else "cancelled").inc()
                raise
            except Exception as exc:  # a bug: report it without details, keep serving
                code = grpc.StatusCode.INTERNAL
                log.exception("internal error in %s", rpc)
                span.record_exception(exc)
                await call.abort(code, f"internal error ({type(exc).__name__}); see server logs", None)
            finally:
                if admission is not None:
                    admission.close()
                if call.cancelled() and code == grpc.StatusCode.OK:
                    code = grpc.StatusCode.CANCELLED
                self.metrics.requests.labels(rpc, model_label, code.name).inc()

    async def _prepare(self, request: pb.ExplainRequest, call: CallContext, streaming: bool = False):
        """Validate what the request asks for, admit it, then decode its input and reserve the
        memory it will hold: each step before any work, the heavy ones off the event loop.
        Returns (job with its admission, output options, the picture overlays are drawn on)."""
        job, options = await self._off_loop(self._parse, request)
        admission = await self._admit(job, call)
        try:
            x, rgb = await self._off_loop(
                tensors.input_from_request, request, self.backend.models[job.model], self.image_limits
            )
            if (remaining := call.time_remaining()) is not None and remaining <= DEADLINE_MARGIN_S:
                raise DeadlineExceeded("the deadline passed while the input was decoded")
            # Where maps go in the image sent (the crop box, original-size maps) and the capped
            # picture overlays are drawn on (kept only with overlays).
            picture = await self._off_loop(
                convert.map_frame, request, self.backend.models[job.model], rgb, options, self.config.max_overlay_side
            )
            evaluate = None
            if request.HasField("evaluate"):
                evaluate = quality_codec.evaluate_from_proto(
                    request.evaluate, rgb.shape[:2], tuple(x.shape[-2:]), picture.region
                )
                evaluate.groups(list(job.methods), job.targets)  # a listed metric that cannot apply is an error
            input_size = tuple(x.shape[-2:])
            per_map = convert.response_bytes_per_map(options, picture, input_size)
            # The maps' wire bytes are exact; overlay PNGs compress, so they are not counted here.
            # A stream sends the fast maps in its first message and each deep map in its own.
            wire = convert.response_bytes_per_map(dataclasses.replace(options, include_overlay=False), picture, input_size)
            in_one_message = maps_in_response(job, fast_only=streaming)
            if in_one_message * wire > self.config.max_message_bytes:
                raise ResourceExhausted(
                    f"{in_one_message} maps of {wire / 2**20:.1f} MiB each would not fit in one message of at "
                    f"most {self.config.max_message_bytes / 2**20:.0f} MiB; use float16 maps, the input map size, "
                    "fewer maps, or ExplainStream for deep maps (a message per map)",
                    "output.map_size",
                )
            needed = request_bytes(job, x, picture.nbytes, per_map, admission.deep_bytes)
            if needed > self.config.max_request_bytes:
                raise ResourceExhausted(
                    f"this request would hold about {needed / 2**20:.0f} MiB, over the limit of "
                    f"{self.config.max_request_bytes / 2**20:.0f} MiB; ask for fewer targets or methods, "
                    "fewer samples, or no overlay",
                    "methods",
                )
            admission.until_closed(self.memory.reserve(needed, "model"))
        except BaseException:
            admission.close()
            raise
        job = dataclasses.replace(job, x=x, evaluate=evaluate, admission=admission)
        return job, options, picture

    async def _prepare_stream(self, request: pb.ExplainRequest, call: CallContext):
        """As `_prepare`; each map travels in a message of its own, so only one must fit."""
        return await self._prepare(request, call, streaming=True)

    def _parse(self, request: pb.ExplainRequest):
        """Everything a user controls but the input itself, validated: (job without x, options)."""
        if not request.model:
            raise InvalidArgument(f"name a model; served: {', '.join(sorted(self.backend.models))}", "model")
        spec = check_model(self.backend, request.model)  # NOT_FOUND before anything else
        request_id = request.request_id or uuid.uuid4().hex
        if len(request_id) > 128 or not request_id.isprintable():
            raise InvalidArgument("must be at most 128 printable characters", "request_id")
        targets, methods = convert.request_head_from_proto(
            request, spec, self.config.limits, self.config.max_methods
        )
        tensors.check_input_shape(request, spec)  # before admission: a bad shape is never "busy"
        options = convert.output_options_from_proto(request.output if request.HasField("output") else None)
        if request.HasField("evaluate"):
            require_feature(self.backend, EVALUATE, "evaluate")
        policy = quality_codec.policy_from_request(request)
        if policy is not None:
            field = next(f for f in ("latency_budget_ms", "completeness_target", "explain_if") if request.HasField(f))
            require_feature(self.backend, POLICY, field)
        job = ExplainJob(request.model, None, targets, methods, options.top_predictions, request_id, None, policy)
        return job, options

    async def _admit(self, job: ExplainJob, call: CallContext) -> Admission:
        admit = getattr(self.backend, "admit", None)
        return await admit(job, self._timeout(call)) if admit is not None else Admission()

    async def _prepare_sanity_off_loop(self, request: pb.SanityCheckRequest, call: CallContext) -> SanityJob:
        return await self._off_loop(self._prepare_sanity, request)

    def _prepare_sanity(self, request: pb.SanityCheckRequest) -> SanityJob:
        if not request.model:
            raise InvalidArgument(f"name a model; served: {', '.join(sorted(self.backend.models))}", "model")
        spec = check_model(self.backend, request.model)
        require_feature(self.backend, SANITY_CHECK, "SanityCheck")
        r = quality_codec.sanity_request_from_proto(
            request, spec, self.config.limits, self.config.max_methods, self.image_limits
        )
        return SanityJob(request.model, r.x, r.methods, r.layers, r.modes, r.target, r.seed)

    def _timeout(self, call: CallContext) -> float:
        """Our own deadline, a little inside the client's, so that we (not the transport's
        cancellation) end the call: the response says what was still running and the metrics
        count it."""
        remaining = call.time_remaining()
        if remaining is None:
            return self.config.default_deadline_s
        return max(remaining - DEADLINE_MARGIN_S, 0.0)

    def _add_event(self, response: pb.ExplainResponse, event, options, rgb) -> None:
        if isinstance(event, PolicyEvent):
            response.policy.CopyFrom(quality_codec.policy_decision_to_proto(event.decision))
        elif isinstance(event, QualityEvent):
            response.quality.extend(quality_codec.quality_score_to_proto(s) for s in event.scores)
        elif isinstance(event, FastEvent):
            result = event.result
            response.predictions.extend(convert.predictions_to_proto(result.predictions))
            response.targets.extend(result.targets)
            for a in result.attributions:
                response.attributions.append(
                    convert.attribution_to_proto(
                        a, options, rgb, get_method(a.method).signed, 0.0, event.seconds * 1000
                    )
                )
        else:
            response.attributions.append(self._deep_proto(event, options, rgb))

    def _deep_proto(self, event: DeepEvent, options, rgb) -> pb.Attribution:
        a = event.attribution
        return convert.attribution_to_proto(
            a, options, rgb, get_method(a.method).signed, event.queue_seconds * 1000, event.compute_seconds * 1000
        )
