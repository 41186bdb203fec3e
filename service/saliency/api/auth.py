"""Optional bearer-token authentication, as one server interceptor. Health checks are exempt so
Kubernetes probes work without a token."""

from __future__ import annotations

import hmac
from collections.abc import Callable

import grpc

from saliency.runtime.metrics import Metrics

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with `authorization: Bearer <one of tokens>`; refuses the
    others with UNAUTHENTICATED before their request body is read."""

    def __init__(self, tokens: frozenset[str], metrics: Metrics):
        if not tokens:  # an empty set would refuse everything; config refuses it first
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._tokens = [t.encode() for t in tokens]
        self._metrics = metrics

    def _authorized(self, metadata) -> bool:
        return self.authorized(dict(metadata or ()).get("authorization", ""))

    def authorized(self, header: str) -> bool:
        """An `authorization` header value (gRPC metadata or HTTP) carries one of the tokens."""
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 9110 11.1)
            return False
        offered = credentials.strip().encode()
        # Compare against every token in constant time: no early exit that leaks which matched.
        return any([hmac.compare_digest(offered, token) for token in self._tokens])

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        if self._authorized(details.invocation_metadata):
            return handler
        self._metrics.rejected.labels("", "unauthenticated").inc()
        return _denying(handler)


_MESSAGE = "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'"


def _ignore_body(_data: bytes) -> None:
    """The denying handler's request deserializer: an unauthenticated body is never parsed."""
    return None


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that fails with UNAUTHENTICATED.

    It does not deserialize the request: parsing an unauthenticated caller's bytes is work and
    attack surface for nothing, and an undecodable body would fail the call as UNKNOWN with an
    ERROR traceback in the log instead of UNAUTHENTICATED."""
    kwargs = {
        "request_deserializer": _ignore_body,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:

        async def deny_unary(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)

        return grpc.unary_unary_rpc_method_handler(deny_unary, **kwargs)
    if handler.unary_stream:

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)
            yield  # pragma: no cover - makes this an async generator

        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:

        async def deny_stream_unary(request_iterator, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)

        return grpc.stream_unary_rpc_method_handler(deny_stream_unary, **kwargs)

    async def deny_stream_stream(request_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)
        yield  # pragma: no cover

    return grpc.stream_stream_rpc_method_handler(deny_stream_stream, **kwargs)
