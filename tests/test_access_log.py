"""Logs: `saliency serve --log-format json` writes one JSON access line per RPC (rpc, model,
code, ms, request_id, trace_id, peer, bytes) whatever the outcome; `x-request-id` is honoured;
an internal error is logged once with the request's id and trace; text format and levels."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from saliency.runtime.config import load_config
from saliency.runtime.logs import (
    CURRENT_REQUEST,
    RequestContext,
    RequestContextFilter,
    configure_logging,
)
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServerProcess, ServiceThread, chelsea_png, method, with_config

TOKEN = "access-log-test-token"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
AUTH = ("authorization", f"Bearer {TOKEN}")


def access_lines(output: str) -> list[dict]:
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [r for r in records if r["logger"] == "saliency.access"]


@pytest.mark.slow
def test_json_access_line_for_every_rpc_and_outcome(tmp_path):
    server = ServerProcess(
        "--models", "tinycnn", "--max-chunk", "4", "--max-chunk-forward", "4", "--log-format", "json",
        env={"SALIENCY_CACHE_DIR": str(tmp_path), "SALIENCY_AUTH_TOKENS": TOKEN},
    )
    seen: dict[str, str] = {}  # request id -> the status the client saw
    try:
        stub = server.stub()
        good = pb.ExplainRequest(model="tinycnn", image=chelsea_png(), methods=[method(pb.METHOD_GRADCAM)])
        traceparent = f"00-{CALLER_TRACE}-b7ad6b7169203331-01"
        response = stub.Explain(good, timeout=60, metadata=[AUTH, ("x-request-id", "hdr-ok"), ("traceparent", traceparent)])
        assert response.request_id == "hdr-ok"  # the servicer answers with the header's id
        seen["hdr-ok"] = "OK"
        ok_sizes = (good.ByteSize(), response.ByteSize())

        # The request's own field wins over the header.
        field = pb.ExplainRequest(model="tinycnn", image=chelsea_png(), request_id="field-id")
        assert stub.Explain(field, timeout=60, metadata=[AUTH, ("x-request-id", "hdr-ignored")]).request_id == "field-id"
        seen["field-id"] = "OK"

        failing = {
            "hdr-notfound": (pb.ExplainRequest(model="no-such-model", image=chelsea_png()), [AUTH], 60),
            "hdr-badimage": (pb.ExplainRequest(model="tinycnn", image=b"not an image"), [AUTH], 60),
            "hdr-noauth": (good, [], 60),
            "hdr-toobig": (
                pb.ExplainRequest(model="tinycnn", image=chelsea_png(),
                                  methods=[method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=1024)]),
                [AUTH], 0.3,
            ),
        }
        for request_id, (request, metadata, timeout) in failing.items():
            with pytest.raises(grpc.RpcError) as caught:
                stub.Explain(request, timeout=timeout, metadata=[*metadata, ("x-request-id", request_id)])
            seen[request_id] = caught.value.code().name

        # A stream the client walks away from after its first event.
        stream_request = pb.ExplainRequest(
            model="tinycnn", image=chelsea_png(),
            methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=256)],
        )
        stream = stub.ExplainStream(stream_request, timeout=60, metadata=[AUTH, ("x-request-id", "hdr-cancel")])
        next(stream)
        stream.cancel()
        seen["hdr-cancel"] = "CANCELLED"

        unknown = server.channel().unary_unary("/saliency.v1.Explainer/NoSuchRpc")
        with pytest.raises(grpc.RpcError) as caught:
            unknown(b"", timeout=10, metadata=[AUTH, ("x-request-id", "hdr-unknown")])
        seen["hdr-unknown"] = caught.value.code().name
        assert server.health() == 1  # SERVING; health checks are not access-logged at info
    finally:
        server.stop()

    lines = access_lines(server.output())
    by_id = {}
    for line in lines:
        assert line["request_id"] not in by_id, f"two lines for one RPC: {line}"
        by_id[line["request_id"]] = line
    assert {rid: by_id[rid]["code"] for rid in seen} == seen
    assert seen["hdr-notfound"] == "NOT_FOUND" and seen["hdr-badimage"] == "INVALID_ARGUMENT"
    assert seen["hdr-noauth"] == "UNAUTHENTICATED" and seen["hdr-unknown"] == "UNIMPLEMENTED"
    assert seen["hdr-toobig"] in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
    assert not [line for line in lines if line["rpc"].startswith("/grpc.health")]

    ok = by_id["hdr-ok"]
    assert ok["rpc"] == "/saliency.v1.Explainer/Explain" and ok["model"] == "tinycnn"
    assert ok["trace_id"] == CALLER_TRACE  # the caller's trace: the server span is its child
    assert ok["peer"].startswith("ipv4:127.0.0.1:") and ok["ms"] > 0 and ok["level"] == "INFO"
    assert (ok["bytes_in"], ok["bytes_out"]) == ok_sizes
    assert by_id["hdr-notfound"]["model"] == "no-such-model"
    # Without a caller trace the line names the trace the server started.
    assert len(by_id["hdr-notfound"]["trace_id"]) == 32 and by_id["hdr-notfound"]["trace_id"] != CALLER_TRACE
    assert by_id["hdr-cancel"]["rpc"] == "/saliency.v1.Explainer/ExplainStream"
    assert by_id["hdr-cancel"]["bytes_out"] > 0  # the first event went out before the cancel


def test_an_internal_error_is_logged_once_with_its_request_id_and_trace(caplog, monkeypatch):
    service = ServiceThread(with_config(models=("tinycnn",)))
    try:

        async def broken(job, timeout):
            raise RuntimeError("a bug")
            yield  # pragma: no cover

        monkeypatch.setattr(service.service.backend, "explain", broken)
        caplog.handler.addFilter(RequestContextFilter())
        caplog.set_level(logging.INFO)
        request = pb.ExplainRequest(model="tinycnn", image=chelsea_png(), methods=[method(pb.METHOD_GRADCAM)])
        with pytest.raises(grpc.RpcError) as caught:
            service.stub().Explain(request, timeout=60, metadata=[("x-request-id", "bug-1")])
        assert caught.value.code() == grpc.StatusCode.INTERNAL
    finally:
        service.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and "a bug" in str(errors[0].exc_info[1])
    assert errors[0].request_id == "bug-1" and len(errors[0].trace_id) == 32
    access = [r for r in caplog.records if r.name == "saliency.access" and r.request_id == "bug-1"]
    assert len(access) == 1 and access[0].code == "INTERNAL" and access[0].levelno == logging.WARNING
    assert access[0].trace_id == errors[0].trace_id


def test_text_format_carries_the_request_and_trace_ids():
    stream = io.StringIO()
    configure_logging("text", "info", stream)
    try:
        tracer = TracerProvider().get_tracer("t")
        token = CURRENT_REQUEST.set(RequestContext("text-1"))
        with tracer.start_as_current_span("s") as span:
            logging.getLogger("saliency.test").warning("inside %s", "a span")
            trace_id = trace.format_trace_id(span.get_span_context().trace_id)
        CURRENT_REQUEST.reset(token)
        logging.getLogger("saliency.test").info("outside")
        logging.getLogger("saliency.test").debug("below the level")
    finally:
        logging.getLogger().handlers.clear()
    first, second = stream.getvalue().splitlines()
    assert first.endswith(f"WARNING saliency.test: inside a span request_id=text-1 trace_id={trace_id} "
                          f"span_id={first.rsplit('span_id=', 1)[1]}")
    assert second.endswith("INFO saliency.test: outside")


def test_log_settings_fail_closed():
    assert load_config(env={"SALIENCY_LOG_FORMAT": "json", "SALIENCY_LOG_LEVEL": "DEBUG"}).log_format == "json"
    with pytest.raises(ValueError, match="log_format"):
        load_config(env={"SALIENCY_LOG_FORMAT": "yaml"})
    with pytest.raises(ValueError, match="log_level"):
        load_config(env={"SALIENCY_LOG_LEVEL": "verbose"})
