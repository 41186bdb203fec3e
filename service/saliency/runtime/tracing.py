"""OpenTelemetry tracing: a tracer provider per service; OTLP export only when configured."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

TRACER_NAME = "saliency"


def make_tracer_provider(otlp_endpoint: str = "", exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider that exports to `exporter`, or to OTLP at `otlp_endpoint`, or nowhere."""
    provider = TracerProvider(resource=Resource.create({"service.name": "saliency"}))
    if exporter is None and otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def tracer_from(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer(TRACER_NAME)
