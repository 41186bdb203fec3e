"""OpenTelemetry tracing: a tracer provider per service; OTLP/gRPC export only when configured.

Configured means `otlp_endpoint` (config, `--otlp-endpoint`, `SALIENCY_OTLP_ENDPOINT`) or the
standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, unless
`OTEL_TRACES_EXPORTER=none`. The SDK reads the rest of the standard variables itself:
`OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (service.name defaults to "saliency"),
`OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*` (batching), `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`,
`..._CERTIFICATE`, `..._TIMEOUT`, `..._COMPRESSION`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

TRACER_NAME = "saliency"
DEFAULT_SERVICE_NAME = "saliency"
OTLP_GRPC_PORT = 4317
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OtlpTarget:
    """Where spans go: `host:port` of an OTLP/gRPC receiver, over TLS or plaintext."""

    address: str
    tls: bool

    def describe(self) -> str:
        return f"OTLP/gRPC to {self.address} ({'TLS' if self.tls else 'plaintext'})"


def _env(env: Mapping[str, str], *names: str) -> str:
    """The first of `names` (the traces-specific variable first) that is set and not empty."""
    return next((env[n].strip() for n in names if env.get(n, "").strip()), "")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def otlp_target(otlp_endpoint: str = "", env: Mapping[str, str] | None = None) -> OtlpTarget | None:
    """The receiver spans are exported to, or None (no export). Raises ValueError for a setting
    that would silently export nothing (wrong protocol, unknown scheme, a path) or export in
    the clear without being asked to."""
    env = os.environ if env is None else env
    exporter = _env(env, "OTEL_TRACES_EXPORTER").lower() or "otlp"
    if exporter == "none":
        return None
    if exporter != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: saliency exports traces with 'otlp' (or 'none')")
    endpoint = otlp_endpoint.strip() or _env(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    protocol = _env(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol != "grpc":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: saliency ships the OTLP/gRPC exporter; "
            "use 'grpc' and the receiver's gRPC port (usually 4317)"
        )
    scheme = ""
    if "://" in endpoint:
        scheme, _, endpoint = endpoint.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"otlp_endpoint: scheme {scheme!r} is not http:// (plaintext) or https:// (TLS)")
    parts = urlsplit(f"//{endpoint}")
    if parts.path.strip("/") or parts.query or not parts.hostname:
        raise ValueError(
            f"otlp_endpoint: {endpoint!r} is not HOST:PORT; OTLP/gRPC has no URL path "
            "(a '/v1/traces' endpoint is OTLP/HTTP)"
        )
    try:
        port = parts.port or OTLP_GRPC_PORT
    except ValueError:
        raise ValueError(f"otlp_endpoint: {endpoint!r} has no valid port") from None
    host = parts.hostname
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if scheme:
        return OtlpTarget(address, tls=scheme == "https")
    insecure = _env(env, "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE").lower()
    if insecure:
        return OtlpTarget(address, tls=insecure != "true")
    if _is_loopback(host):  # a collector beside us (sidecar, node agent): nothing leaves the host
        return OtlpTarget(address, tls=False)
    # The OTLP specification would pick TLS here; a plaintext collector then receives nothing
    # and nothing says so. Make the choice explicit instead.
    raise ValueError(
        f"otlp_endpoint: name the scheme for {host}: http://{address} (plaintext) or https://{address} (TLS)"
    )


def service_resource() -> Resource:
    """service.name from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, else "saliency"."""
    from saliency import __version__

    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def make_tracer_provider(otlp_endpoint: str = "", exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider that exports to `exporter`, or to OTLP at `otlp_endpoint` (or the OTEL_*
    variables), or nowhere. The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based,
    always on)."""
    from saliency.runtime.logs import RequestTraceRecorder

    provider = TracerProvider(resource=service_resource())
    # Notes each RPC's trace id for its access log line (runtime/logs.py).
    provider.add_span_processor(RequestTraceRecorder())
    target = None if exporter is not None else otlp_target(otlp_endpoint)
    if target is not None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=target.address, insecure=not target.tls)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info(
        "tracing: %s, service.name=%s, sampler=%s",
        target.describe() if target else ("in-process exporter" if exporter else "no export"),
        provider.resource.attributes.get(SERVICE_NAME),
        provider.sampler.get_description(),
    )
    return provider


def tracer_from(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer(TRACER_NAME)
