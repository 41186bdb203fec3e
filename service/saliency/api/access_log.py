"""One access log line per RPC, as a grpc.aio server interceptor (the first one, so calls that
auth refuses are logged too): rpc, model, code, ms, request_id, trace_id, peer, bytes in/out.

Request ids: the request's own `request_id` field when it has one, else the `x-request-id`
metadata, else a new one. An empty `request_id` field is filled in with the chosen id, so the
servicer's response, span and error lines carry the same id as the access line.

Health checks are logged at DEBUG (the kubelet probes every few seconds); server-side failures
(INTERNAL, UNKNOWN, UNAVAILABLE, DATA_LOSS) at WARNING; everything else at INFO. The failure
itself is logged once, by the servicer, with its traceback and the same request id.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass

import grpc
from opentelemetry.propagate import extract
from opentelemetry.trace import format_trace_id, get_current_span

from saliency.runtime.logs import CURRENT_REQUEST, RequestContext

log = logging.getLogger("saliency.access")
REQUEST_ID_HEADER = "x-request-id"
MAX_LOGGED_CHARS = 128  # client-chosen strings (model, request id) are cut to this
QUIET_PREFIXES = ("/grpc.health.v1.Health/",)
SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}
)


def _printable(text: str) -> str:
    """A client-chosen string made safe for one log line (JSON escapes; text does not)."""
    text = text[:MAX_LOGGED_CHARS]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


@dataclass
class _Call:
    rpc: str
    peer: str = ""
    model: str = ""
    request: RequestContext | None = None
    caller_trace_id: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = 0.0


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        metadata = dict(details.invocation_metadata or ())
        header_id = str(metadata.get(REQUEST_ID_HEADER, "") or "")
        call = _Call(details.method, started=time.perf_counter())
        # The caller's trace id: what the line says when this server's span is not sampled.
        caller = get_current_span(extract(metadata)).get_span_context()
        call.caller_trace_id = format_trace_id(caller.trace_id) if caller.is_valid else ""
        call.request = RequestContext(header_id or uuid.uuid4().hex)
        # gRPC runs the rest of the interceptors and the handler in this RPC's own context.
        CURRENT_REQUEST.set(call.request)
        handler = await continuation(details)
        if handler is None:
            _write(call, grpc.StatusCode.UNIMPLEMENTED)
            return None
        return _logging_handler(handler, call)


def _adopt(call: _Call, request, context) -> None:
    """Take the model and the request id from the request; fill in an empty request_id."""
    call.peer = context.peer() or ""
    call.model = _printable(str(getattr(request, "model", "") or ""))
    if hasattr(request, "request_id"):
        if request.request_id:
            call.request.request_id = request.request_id
        else:
            request.request_id = call.request.request_id


def _code_of(context, exc: BaseException | None) -> grpc.StatusCode:
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        remaining = context.time_remaining()
        return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0.05 else grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if exc is not None and not isinstance(exc, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN  # what gRPC answers for an exception it did not expect
    return grpc.StatusCode.OK


def _write(call: _Call, code: grpc.StatusCode) -> None:
    request = call.request
    trace_id = (request.trace_id if request else "") or call.caller_trace_id
    if call.rpc.startswith(QUIET_PREFIXES):
        level = logging.DEBUG
    elif code in SERVER_FAULTS:
        level = logging.WARNING
    else:
        level = logging.INFO
    if not log.isEnabledFor(level):
        return
    ms = round((time.perf_counter() - call.started) * 1000, 2)
    log.log(
        level,
        "%s %s %.1f ms",
        call.rpc,
        code.name,
        ms,
        extra={
            "rpc": call.rpc,
            "model": call.model,
            "code": code.name,
            "ms": ms,
            "request_id": _printable(request.request_id) if request else "",
            "trace_id": trace_id,
            "peer": call.peer,
            "bytes_in": call.bytes_in,
            "bytes_out": call.bytes_out,
        },
    )


def _logging_handler(handler: grpc.RpcMethodHandler, call: _Call) -> grpc.RpcMethodHandler:
    """`handler` with the same behaviour, counting bytes and writing the line when it ends."""

    def deserialize(raw: bytes):
        call.bytes_in += len(raw)
        return handler.request_deserializer(raw) if handler.request_deserializer else raw

    # Responses are counted by their encoded size as the handler returns them: a unary
    # response is serialized only after the handler (and this line) is done.
    kwargs = {"request_deserializer": deserialize, "response_serializer": handler.response_serializer}

    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            _adopt(call, request, context)
            exc = None
            try:
                response = await inner(request, context)
                call.bytes_out += _size(response)
                return response
            except BaseException as e:
                exc = e
                raise
            finally:
                _write(call, _code_of(context, exc))

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)

    if handler.unary_stream:
        inner_stream = handler.unary_stream

        async def unary_stream(request, context):
            _adopt(call, request, context)
            exc = None
            try:
                async for response in _responses(inner_stream(request, context)):
                    call.bytes_out += _size(response)
                    yield response
            except BaseException as e:
                exc = e
                raise
            finally:
                _write(call, _code_of(context, exc))

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)

    if handler.stream_unary:
        inner_client_stream = handler.stream_unary

        async def stream_unary(request_iterator, context):
            call.peer = context.peer() or ""
            exc = None
            try:
                response = await inner_client_stream(request_iterator, context)
                call.bytes_out += _size(response)
                return response
            except BaseException as e:
                exc = e
                raise
            finally:
                _write(call, _code_of(context, exc))

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)

    inner_bidi = handler.stream_stream

    async def stream_stream(request_iterator, context):
        call.peer = context.peer() or ""
        exc = None
        try:
            async for response in _responses(inner_bidi(request_iterator, context)):
                call.bytes_out += _size(response)
            yield response
        except BaseException as e:
            exc = e
            raise
        finally:
            _write(call, _code_of(context, exc))

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)


def _size(message) -> int:
    """Encoded size of a protobuf message (0 for anything else, e.g. None)."""
    byte_size = getattr(message, "ByteSize", None)
    return byte_size() if byte_size is not None else 0


async def _responses(result):
    """A streaming behaviour's responses: it is an async generator, or a coroutine that writes
    with context.write() and returns None."""
    if hasattr(result, "__aiter__"):
        async with aclosing(result):  # a cancelled call closes the handler's generator now
            async for response in result:
                yield response
    else:
        await result


def write_access_line(
    rpc: str,
    code: grpc.StatusCode,
    started: float,
    *,
    model: str = "",
    request: RequestContext | None = None,
    caller_trace_id: str = "",
    peer: str = "",
    bytes_in: int = 0,
    bytes_out: int = 0,
) -> None:
    """The access line of a call served by another transport (the HTTP API), with the same
    fields and levels as a gRPC call's; `started` is its time.perf_counter() at arrival."""
    call = _Call(rpc, peer, _printable(model), request, caller_trace_id, bytes_in, bytes_out, started)
    _write(call, code)
