"""OTLP trace export: `saliency serve --otlp-endpoint` sends the spans of an Explain to a real
OTLP/gRPC receiver on loopback (a TraceService written here: the Collector is not installable
offline), in the caller's trace, under OTEL_SERVICE_NAME; endpoint and OTEL_* handling."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from saliency.cli import main
from saliency.runtime.tracing import OtlpTarget, make_tracer_provider, otlp_target
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServerProcess, chelsea_png, method

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every ExportTraceServiceRequest it is sent."""

    def __init__(self):
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.arrived = threading.Condition()

    def Export(self, request, context):
        with self.arrived:
            self.requests.append(request)
            self.arrived.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self):
        """(service.name, span) for every span received so far."""
        out = []
        for request in list(self.requests):
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    out.extend((attributes.get("service.name"), span) for span in scope.spans)
        return out

    def wait_for(self, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not predicate(self.spans()) and time.monotonic() < deadline:
                self.arrived.wait(deadline - time.monotonic())
            return self.spans()


@pytest.fixture
def receiver():
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.port = port
    yield servicer
    server.stop(0)


@pytest.mark.slow
def test_spans_of_one_explain_reach_a_real_otlp_receiver_in_the_callers_trace(receiver, tmp_path):
    server = ServerProcess(
        "--models", "tinycnn", "--max-chunk", "4", "--max-chunk-forward", "4",
        # Bare loopback address: plaintext (a collector beside the service), as the example.
        "--otlp-endpoint", f"127.0.0.1:{receiver.port}",
        env={"SALIENCY_CACHE_DIR": str(tmp_path), "OTEL_SERVICE_NAME": "saliency-otlp-test",
             "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    try:
        request = pb.ExplainRequest(
            model="tinycnn", image=chelsea_png(), request_id="otlp-1",
            methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=8)],
        )
        traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        response = server.stub().Explain(request, timeout=60, metadata=[("traceparent", traceparent)])
        assert response.request_id == "otlp-1"

        def ours(spans):
            return [(name, s) for name, s in spans if s.trace_id.hex() == CALLER_TRACE]

        def complete(spans):
            names = {s.name for _, s in ours(spans)}
            return "saliency.v1.Explainer/Explain" in names and "method ig" in names

        spans = ours(receiver.wait_for(complete, timeout=30))
    finally:
        server.stop()
    names = {s.name for _, s in spans}
    assert "saliency.v1.Explainer/Explain" in names and "method ig" in names, (names, server.output()[-3000:])
    assert {service for service, _ in spans} == {"saliency-otlp-test"}
    root = next(s for _, s in spans if s.name == "saliency.v1.Explainer/Explain")
    assert root.parent_span_id.hex() == CALLER_SPAN  # a child of the caller's span
    attributes = {a.key: a.value.string_value for a in root.attributes}
    assert attributes["saliency.request_id"] == "otlp-1" and attributes["saliency.model"] == "tinycnn"
    assert "tracing: OTLP/gRPC to 127.0.0.1" in server.output()


@pytest.mark.parametrize(
    ("endpoint", "env", "expected"),
    [
        ("", {}, None),
        ("127.0.0.1:4317", {}, OtlpTarget("127.0.0.1:4317", tls=False)),
        ("localhost", {}, OtlpTarget("localhost:4317", tls=False)),
        ("[::1]:4317", {}, OtlpTarget("[::1]:4317", tls=False)),
        ("http://otel-collector.observability:4317", {}, OtlpTarget("otel-collector.observability:4317", tls=False)),
        ("https://otel.example.com", {}, OtlpTarget("otel.example.com:4317", tls=True)),
        ("otel.example.com:4317", {"OTEL_EXPORTER_OTLP_INSECURE": "false"}, OtlpTarget("otel.example.com:4317", tls=True)),
        ("otel.example.com:4317", {"OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true"}, OtlpTarget("otel.example.com:4317", tls=False)),
        ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, OtlpTarget("c:4317", tls=False)),
        # The traces-specific variable wins over the general one; the config wins over both.
        ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t:443"},
         OtlpTarget("t:443", tls=True)),
        ("http://mine:4317", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, OtlpTarget("mine:4317", tls=False)),
        ("http://c:4317", {"OTEL_TRACES_EXPORTER": "none"}, None),
    ],
)
def test_endpoint_resolution(endpoint, env, expected):
    assert otlp_target(endpoint, env) == expected


@pytest.mark.parametrize(
    ("endpoint", "env", "complaint"),
    [
        ("otel.example.com:4317", {}, "name the scheme"),  # plaintext or TLS: never guessed off-host
        ("grpc://c:4317", {}, "scheme 'grpc'"),
        ("http://c:4318/v1/traces", {}, "no URL path"),
        ("c:port", {"OTEL_EXPORTER_OTLP_INSECURE": "true"}, "no valid port"),
        ("http://c:4317", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "OTLP/gRPC exporter"),
        ("http://c:4317", {"OTEL_TRACES_EXPORTER": "zipkin"}, "'otlp'"),
    ],
)
def test_settings_that_would_export_nothing_are_refused(endpoint, env, complaint):
    with pytest.raises(ValueError, match=complaint):
        otlp_target(endpoint, env)


def test_serve_refuses_a_bad_endpoint_in_one_line(capsys):
    assert main(["serve", "--otlp-endpoint", "collector.observability:4317"]) == 2
    err = capsys.readouterr().err
    assert "http://collector.observability:4317" in err and "Traceback" not in err


def test_service_name_and_sampler_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    provider = make_tracer_provider()
    assert provider.resource.attributes["service.name"] == "saliency"
    assert provider.resource.attributes["service.version"]
    provider.shutdown()

    monkeypatch.setenv("OTEL_SERVICE_NAME", "explainer-eu")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    provider = make_tracer_provider()
    assert provider.resource.attributes["service.name"] == "explainer-eu"
    assert "0.25" in provider.sampler.get_description()
    provider.shutdown()

    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,deployment.environment=prod")
    provider = make_tracer_provider()
    assert provider.resource.attributes["service.name"] == "from-attributes"
    assert provider.resource.attributes["deployment.environment"] == "prod"
    provider.shutdown()
