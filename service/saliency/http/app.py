"""The routes of the HTTP/JSON API (docs/http.md) and the web page's static files.

Every route that explains goes through the gRPC servicer's core (`ExplainerServicer.explain`,
`explain_stream`, `list_models`) with an `HttpCall` as its context: one path of validation,
admission, deadlines, memory budget, metrics (`rpc` = the route), spans and access lines. What
this module adds is HTTP's own: bearer tokens, the body limit, JSON or protobuf bodies, the
Vertex and KServe shapes (vertex.py, kserve.py), and errors as `{code, message, field}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry.propagate import extract
from opentelemetry.trace import format_trace_id, get_current_span
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from saliency.api.access_log import REQUEST_ID_HEADER, write_access_line
from saliency.api.servicer import CallAborted, ExplainerServicer, status_for, status_message
from saliency.errors import SaliencyError
from saliency.http import codec, kserve, vertex
from saliency.http.body import body_limit, read_body
from saliency.http.calls import HttpCall, HttpError, error_body, http_status, timeout_from
from saliency.runtime.logs import CURRENT_REQUEST, RequestContext
from saliency.v1 import explainer_pb2 as pb

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
AUTH_MESSAGE = "missing or invalid bearer token: send the header 'Authorization: Bearer <token>'"

# Routes, as the `rpc` label of saliency_requests_total, the span name and the access line.
EXPLAIN = "POST /v1/models/{model}:explain"
EXPLAIN_STREAM = "POST /v1/models/{model}:explainStream"
PREDICT = "POST /v1/models/{model}:predict"
LIST_MODELS = "GET /v1/models"
MODEL_STATUS = "GET /v1/models/{model}"
VERTEX_EXPLAIN = "POST /v1/projects/{project}/locations/{location}/endpoints/{endpoint}:explain"
VERTEX_PREDICT = "POST /v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict"
VERTEX_SHORT_EXPLAIN = "POST /v1/endpoints/{endpoint}:explain"
VERTEX_SHORT_PREDICT = "POST /v1/endpoints/{endpoint}:predict"


@dataclass
class _Served:
    """What one HTTP call's access line says."""

    route: str
    request: RequestContext
    caller_trace_id: str
    peer: str
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    code: grpc.StatusCode | None = None  # a stream's outcome, once it has one


class HttpApi:
    """The FastAPI app over one servicer; `auth` is the gRPC server's token store (or None)."""

    def __init__(self, servicer: ExplainerServicer, auth=None, static_dir: Path = STATIC_DIR):
        self.servicer = servicer
        self.config = servicer.config
        self.metrics = servicer.metrics
        self.auth = auth
        self.body_limit = body_limit(self.config.max_message_bytes)
        self.app = self._build(static_dir)

    # ---- the app ----------------------------------------------------------------------------------

    def _build(self, static_dir: Path) -> FastAPI:
        app = FastAPI(
            title="saliency",
            summary="Saliency maps for PyTorch image models: the HTTP/JSON face of saliency.v1.Explainer",
            version="1",
            description=(
                "Bodies are saliency.v1 messages in protobuf's JSON mapping (bytes as base64), or binary "
                "protobuf with `Content-Type` / `Accept: application/x-protobuf`. Errors: the HTTP status "
                "of the gRPC code and `{code, message, field}`. See docs/http.md."
            ),
        )
        app.add_exception_handler(StarletteHTTPException, _http_exception)
        app.add_exception_handler(RequestValidationError, _validation_exception)

        body = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}},
                                                              codec.PROTOBUF: {}}}}

        @app.get("/v1/models", tags=["native"], summary="ListModelsResponse: models, methods, parameters")
        async def list_models(request: Request) -> Response:
            return await self._serve(request, LIST_MODELS, self._list_models)

        @app.get("/v1/models/{model}", tags=["kserve"], summary="KServe V1 model status")
        async def model_status(request: Request, model: str) -> Response:
            return await self._serve(request, MODEL_STATUS, lambda s: self._model_status(s, model))

        @app.post("/v1/models/{model}:explain", tags=["native", "kserve"], openapi_extra=body,
                  summary="ExplainRequest -> ExplainResponse; or KServe V1 {instances} -> {predictions, explanations}")
        async def explain(request: Request, model: str) -> Response:
            return await self._serve(request, EXPLAIN, lambda s: self._explain(request, s, model))

        @app.post("/v1/models/{model}:explainStream", tags=["native"], openapi_extra=body,
                  summary="ExplainRequest -> server-sent events, one per ExplainEvent")
        async def explain_stream(request: Request, model: str) -> Response:
            return await self._serve(request, EXPLAIN_STREAM, lambda s: self._explain_stream(request, s, model))

        @app.post("/v1/models/{model}:predict", tags=["kserve"], openapi_extra=body,
                  summary="KServe V1 {instances} -> {predictions}")
        async def predict(request: Request, model: str) -> Response:
            return await self._serve(request, PREDICT, lambda s: self._kserve(request, s, model, explain=False))

        for route, verb in ((VERTEX_EXPLAIN, True), (VERTEX_PREDICT, False)):
            self._vertex_route(app, route, verb, body, with_project=True)
        for route, verb in ((VERTEX_SHORT_EXPLAIN, True), (VERTEX_SHORT_PREDICT, False)):
            self._vertex_route(app, route, verb, body, with_project=False)

        @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
        async def unknown(rest: str) -> Response:
            return self._error(HttpError(grpc.StatusCode.NOT_FOUND, f"no route /v1/{rest[:128]}; see /openapi.json", "path"))

        if static_dir.is_dir():
            app.mount("/", StaticFiles(directory=static_dir, html=True), name="page")
        return app

    def _vertex_route(self, app: FastAPI, route: str, explain: bool, body: dict, with_project: bool) -> None:
        path = route.split(" ", 1)[1]
        tag = "vertex"
        summary = "Vertex AI-shaped {instances, parameters, explanationSpecOverride} -> " + (
            "{explanations, predictions}" if explain else "{predictions}"
        )
        if with_project:

            async def handler(request: Request, project: str, location: str, endpoint: str) -> Response:
                return await self._serve(request, route, lambda s: self._vertex(request, s, endpoint, explain))
        else:

            async def handler(request: Request, endpoint: str) -> Response:
                return await self._serve(request, route, lambda s: self._vertex(request, s, endpoint, explain))

        app.post(path, tags=[tag], summary=summary, openapi_extra=body, name=route)(handler)

    # ---- around every call ------------------------------------------------------------------------

    async def _serve(self, request: Request, route: str, work: Callable[[_Served], Awaitable[Response]]) -> Response:
        """Auth, the access line, request ids and errors around one call."""
        header_id = request.headers.get(REQUEST_ID_HEADER, "")
        context = RequestContext(header_id[:128] or uuid.uuid4().hex)
        CURRENT_REQUEST.set(context)
        caller = get_current_span(extract(dict(request.headers))).get_span_context()
        peer = ""
        if request.client:  # as gRPC writes peers
            host = request.client.host
            peer = f"ipv6:[{host}]:{request.client.port}" if ":" in host else f"ipv4:{host}:{request.client.port}"
        served = _Served(route, context, format_trace_id(caller.trace_id) if caller.is_valid else "", peer)
        code = grpc.StatusCode.OK
        streaming = False
        try:
            self._check_token(request)
            response = await work(served)
            streaming = isinstance(response, EventStream)
        except (SaliencyError, HttpError) as exc:  # found here, before the core: counted here
            error = exc if isinstance(exc, HttpError) else CallAborted(status_for(exc), status_message(str(exc)), exc.field)
            code = error.code
            reason = {grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
                      grpc.StatusCode.UNAUTHENTICATED: "unauthenticated"}.get(code)
            if reason:
                self.metrics.rejected.labels("", reason).inc()
            self.metrics.requests.labels(route, "", code.name).inc()
            response = self._error(error)
        except CallAborted as error:  # the core ended the call: it counted it
            code = error.code
            response = self._error(error)
        except TimeoutError:  # the x-request-timeout backstop; the core counted DEADLINE_EXCEEDED
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            response = self._error(CallAborted(code, "the deadline (x-request-timeout) passed", None))
        except Exception as exc:  # a bug here: report it without details, keep serving
            code = grpc.StatusCode.INTERNAL
            log.exception("internal error in %s", route)
            self.metrics.requests.labels(route, "", code.name).inc()
            response = self._error(CallAborted(code, f"internal error ({type(exc).__name__}); see server logs", None))
        except asyncio.CancelledError:
            write_access_line(route, grpc.StatusCode.CANCELLED, served.started, model=served.model,
                              request=context, caller_trace_id=served.caller_trace_id, peer=peer,
                              bytes_in=served.bytes_in)
            raise
        response.headers[REQUEST_ID_HEADER] = context.request_id
        if not streaming:
            served.bytes_out = len(response.body)
            self._write(served, code)
        return response

    def _write(self, served: _Served, code: grpc.StatusCode) -> None:
        write_access_line(
            served.route, code, served.started, model=served.model, request=served.request,
            caller_trace_id=served.caller_trace_id, peer=served.peer, bytes_in=served.bytes_in,
            bytes_out=served.bytes_out,
        )

    @staticmethod
    def _error(error: CallAborted) -> JSONResponse:
        return JSONResponse(error_body(error), status_code=http_status(error))

    def _check_token(self, request: Request) -> None:
        if self.auth is not None and not self.auth.authorized(request.headers.get("authorization", "")):
            raise HttpError(grpc.StatusCode.UNAUTHENTICATED, AUTH_MESSAGE, None)

    async def _body(self, request: Request, served: _Served) -> bytes:
        body = await read_body(request, self.body_limit)
        served.bytes_in = len(body)
        return body

    async def _core(self, request: Request, call: HttpCall, coroutine: Awaitable):
        """Run one core call: cancelled when the client goes away, cut at x-request-timeout."""
        task = asyncio.current_task()

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            call.gone = True
            task.cancel()

        watcher = asyncio.create_task(watch(), name="http-disconnect")
        try:
            remaining = call.time_remaining()
            if remaining is None:
                return await coroutine
            async with asyncio.timeout(max(remaining, 0.0)):
                return await coroutine
        finally:
            watcher.cancel()

    def _call(self, request: Request) -> HttpCall:
        return HttpCall(request.headers, timeout_from(request.headers))

    async def _encode(self, request: Request, message, status: int = 200) -> Response:
        """A message as JSON or (Accept: application/x-protobuf) binary, encoded off the loop."""
        binary = codec.wants_protobuf(request.headers.get("accept"))
        data = await self.servicer.off_loop(codec.encode_message, message, binary)
        return Response(data, status_code=status, media_type=codec.PROTOBUF if binary else codec.JSON)

    # ---- native -----------------------------------------------------------------------------------

    async def _list_models(self, served: _Served) -> Response:
        return await self._json(codec.message_to_dict(self.servicer.list_models(rpc=LIST_MODELS)))

    async def _model_status(self, served: _Served, model: str) -> Response:
        served.model = model
        ready = model in self.servicer.backend.models
        self.metrics.requests.labels(MODEL_STATUS, model if ready else "", "OK" if ready else "NOT_FOUND").inc()
        if not ready:
            return self._error(CallAborted(grpc.StatusCode.NOT_FOUND, f"model: {model[:128]!r} is not served", "model"))
        return JSONResponse({"name": model, "ready": True})

    async def _native_request(self, request: Request, served: _Served, model: str, body: bytes | dict) -> pb.ExplainRequest:
        """The ExplainRequest of a body (bytes, or JSON already parsed), checked against the URL."""
        if isinstance(body, dict):
            message = await self.servicer.off_loop(codec.message_from_dict, body, pb.ExplainRequest)
        else:
            message = await self.servicer.off_loop(
                codec.parse_message, body, request.headers.get("content-type"), pb.ExplainRequest
            )
        if not message.model:
            message.model = model
        elif message.model != model:
            raise HttpError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{message.model[:128]!r} differs from the model in the URL, {model[:128]!r}", "model")
        if message.ByteSize() > self.config.max_message_bytes:
            raise HttpError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the request is over max_message_bytes ({self.config.max_message_bytes})", "body")
        # As gRPC's access-log interceptor does: one request id for the line, the span and the answer.
        if message.request_id:
            served.request.request_id = message.request_id
        else:
            message.request_id = served.request.request_id
        served.model = model
        return message

    async def _explain(self, request: Request, served: _Served, model: str) -> Response:
        body = await self._body(request, served)
        if codec.media_type(request.headers.get("content-type")) == codec.JSON:
            body = await self.servicer.off_loop(codec.json_object, body)
            if "instances" in body:  # KServe V1 shares this path; ExplainRequest has no `instances`
                return await self._kserve_parsed(request, served, model, body, explain=True)
        message = await self._native_request(request, served, model, body)
        call = self._call(request)
        response = await self._core(request, call, self.servicer.explain(message, call, rpc=EXPLAIN))
        return await self._encode(request, response)

    async def _explain_stream(self, request: Request, served: _Served, model: str) -> Response:
        body = await self._body(request, served)
        message = await self._native_request(request, served, model, body)
        call = self._call(request)
        events = self.servicer.explain_stream(message, call, rpc=EXPLAIN_STREAM)
        try:  # validation and admission fail here, as a plain error answer
            first = await self._core(request, call, anext(events))
        except StopAsyncIteration:
            first = None
        except BaseException:
            await events.aclose()
            raise
        return EventStream(self._sse(events, first, served), self._sse_cleanup(events, served))

    async def _sse(self, events: AsyncIterator[pb.ExplainEvent], first, served: _Served) -> AsyncIterator[bytes]:
        """`event: <prediction|attribution|policy|quality>` with the ExplainEvent as JSON; a
        failure after the first event is an `event: error` with {code, message, field}. The
        access line is written when the stream ends, however it ends (EventStream's cleanup)."""
        served.code = grpc.StatusCode.OK
        try:
            pending = first
            while pending is not None:
                chunk = await self.servicer.off_loop(_sse_event, pending)
                served.bytes_out += len(chunk)
                yield chunk
                pending = await anext(events, None)
        except CallAborted as error:
            served.code = error.code
            yield b"event: error\ndata: " + codec.encode_json(error_body(error)) + b"\n\n"
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            served.code = grpc.StatusCode.CANCELLED
            raise

    def _sse_cleanup(self, events: AsyncIterator[pb.ExplainEvent], served: _Served):
        async def cleanup() -> None:
            await events.aclose()  # never started or cut short: its admission and deep work go now
            self._write(served, served.code or grpc.StatusCode.CANCELLED)

        return cleanup

    # ---- KServe V1 and Vertex ---------------------------------------------------------------------

    async def _kserve(self, request: Request, served: _Served, model: str, explain: bool) -> Response:
        body = await self._body(request, served)
        value = await self.servicer.off_loop(codec.json_object, body)
        return await self._kserve_parsed(request, served, model, value, explain)

    async def _kserve_parsed(self, request: Request, served: _Served, model: str, value: dict, explain: bool) -> Response:
        served.model = model
        route = EXPLAIN if explain else PREDICT
        plan = await self.servicer.off_loop(kserve.plan, value, model, explain)
        answers = await self._instances(request, served, plan, route)
        return await self._json(await self.servicer.off_loop(kserve.answer, plan, answers))

    async def _vertex(self, request: Request, served: _Served, endpoint: str, explain: bool) -> Response:
        body = await self._body(request, served)
        value = await self.servicer.off_loop(codec.json_object, body)
        model = vertex.model_for_endpoint(endpoint, self.servicer.backend.models)
        served.model = model
        spec = self.servicer.backend.models[model]
        plan = await self.servicer.off_loop(vertex.plan, value, model, explain, spec.num_classes)
        answers = await self._instances(request, served, plan, served.route)
        out = await self.servicer.off_loop(
            vertex.answer, plan, answers, model, self.servicer.image_limits, self.config.max_overlay_side, spec.labels
        )
        return await self._json(out)

    async def _instances(self, request: Request, served: _Served, plan, route: str) -> list[pb.ExplainResponse]:
        """Each instance through the core, together (admission decides what runs); an error
        names the instance it came from."""
        call = self._call(request)
        requests = plan.requests
        for i, message in enumerate(requests):
            message.request_id = f"{served.request.request_id}-{i}" if len(requests) > 1 else served.request.request_id

        async def one(i: int, message: pb.ExplainRequest) -> pb.ExplainResponse:
            try:
                return await self.servicer.explain(message, call, rpc=route)
            except CallAborted as error:
                field = error.field or ""
                if field == "image" or field.startswith("image."):
                    field = plan.instances[i].field
                elif len(requests) > 1:
                    field = f"instances[{i}].{field}" if field else f"instances[{i}]"
                message_text = error.message.split(": ", 1)[1] if error.field and error.message.startswith(error.field) else error.message
                raise CallAborted(error.code, f"{field}: {message_text}" if field else message_text, field or None) from None

        tasks = [asyncio.ensure_future(one(i, m)) for i, m in enumerate(requests)]
        try:
            return await self._core(request, call, asyncio.gather(*tasks))
        finally:
            for task in tasks:  # one failed or the call ended: the others stop too
                task.cancel()

    async def _json(self, value) -> Response:
        data = await self.servicer.off_loop(codec.encode_json, value)
        return Response(data, media_type=codec.JSON)

class EventStream(Response):
    """Server-sent events from an async iterator, sent from the request's own task.

    Starlette's StreamingResponse iterates in a child task; the servicer's span, entered by the
    first event in this task, must be left in the same context it was entered in. A client that
    goes away cancels this task, which closes the iterator (and the call's deep work)."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]]):
        super().__init__(None, headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # chunked
        self.chunks, self.cleanup = chunks, cleanup

    async def __call__(self, scope, receive, send) -> None:
        task = asyncio.current_task()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            task.cancel()

        watcher = asyncio.create_task(watch(), name="sse-disconnect")
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await self.chunks.aclose()
            await self.cleanup()


def _sse_event(event: pb.ExplainEvent) -> bytes:
    kind = event.WhichOneof("event") or "message"
    return b"event: " + kind.encode() + b"\ndata: " + codec.encode_message(event, protobuf=False) + b"\n\n"


async def _http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}.get(exc.status_code, grpc.StatusCode.INVALID_ARGUMENT)
    if exc.status_code == 404:
        message, where = f"no route {request.url.path[:128]}; see /openapi.json", "path"
    elif exc.status_code == 405:
        message, where = f"{request.method} is not served on {request.url.path[:128]}", "method"
    else:
        message, where = str(exc.detail), None
    return JSONResponse({"code": code.name, "message": message, "field": where or ""}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _validation_exception(request: Request, exc: RequestValidationError) -> Response:
    first = (exc.errors() or [{}])[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("path", "query", "body"))
    return JSONResponse({"code": "INVALID_ARGUMENT", "message": str(first.get("msg", "invalid request")),
                         "field": where}, status_code=400)
