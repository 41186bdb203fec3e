"""The HTTP/JSON API of `saliency serve` over real uvicorn on 127.0.0.1, beside real gRPC in the
same process: native routes against gRPC answers, SSE order, KServe V1, errors as
{code, message, field}, body limits, deadlines, auth and TLS from the gRPC stores, metrics and
access lines per route."""

from __future__ import annotations

import base64
import json
import logging
import ssl

import httpx
import numpy as np
import pytest
from google.protobuf import json_format

from saliency.http import app as routes
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, method, png_bytes, with_config
from test_reload import issue, replace

TINY = "tinycnn"


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=(TINY,)))
    yield running
    running.stop()


def tiny_png(seed: int = 0) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def tiny_request(**changes) -> pb.ExplainRequest:
    request = pb.ExplainRequest(
        model=TINY, image=tiny_png(), targets=pb.Targets(top_k=2),
        methods=[method(pb.METHOD_VANILLA), method(pb.METHOD_GRADCAM),
                 method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=8)],
    )
    for name, value in changes.items():
        if name == "methods":
            del request.methods[:]
            request.methods.extend(value)
        elif name == "targets":
            request.targets.CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


def as_json(message) -> dict:
    return json_format.MessageToDict(message)


def maps_of(response: pb.ExplainResponse) -> dict:
    return {(a.method, a.target): (tuple(a.map.shape), a.map.data) for a in response.attributions}


def post(service, path: str, body=None, **kwargs) -> httpx.Response:
    return httpx.post(service.http_url + path, json=body, timeout=60, **kwargs)


def test_native_explain_returns_the_grpc_maps_byte_for_byte(service):
    request = tiny_request(request_id="same-call")
    by_grpc = service.stub().Explain(request, timeout=60)
    answer = post(service, f"/v1/models/{TINY}:explain", as_json(request))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    by_http = json_format.Parse(answer.text, pb.ExplainResponse())
    assert len(by_http.attributions) == 6
    assert maps_of(by_http) == maps_of(by_grpc)  # float32 bytes, after base64, equal
    assert [p.class_index for p in by_http.predictions] == [p.class_index for p in by_grpc.predictions]
    assert by_http.request_id == "same-call" and answer.headers["x-request-id"] == "same-call"

    # The binary alternative, negotiated by Content-Type and Accept, carries the same message.
    binary = httpx.post(service.http_url + f"/v1/models/{TINY}:explain", content=request.SerializeToString(),
                        headers={"content-type": "application/x-protobuf", "accept": "application/x-protobuf"},
                        timeout=60)
    assert binary.status_code == 200 and binary.headers["content-type"] == "application/x-protobuf"
    assert maps_of(pb.ExplainResponse.FromString(binary.content)) == maps_of(by_grpc)


def test_the_model_comes_from_the_url_and_must_agree_with_the_body(service):
    body = as_json(tiny_request(model=""))
    assert post(service, f"/v1/models/{TINY}:explain", body).status_code == 200
    body["model"] = "efficientnet_lite0"
    refused = post(service, f"/v1/models/{TINY}:explain", body)
    assert refused.status_code == 400 and refused.json()["field"] == "model"
    assert "differs from the model in the URL" in refused.json()["message"]


def test_list_models_is_the_grpc_answer_in_json(service):
    answer = httpx.get(service.http_url + "/v1/models", timeout=30)
    assert answer.status_code == 200
    assert json_format.ParseDict(answer.json(), pb.ListModelsResponse()) == service.stub().ListModels(
        pb.ListModelsRequest(), timeout=30)
    status = httpx.get(service.http_url + f"/v1/models/{TINY}", timeout=30)
    assert status.json() == {"name": TINY, "ready": True}
    assert httpx.get(service.http_url + "/v1/models/nope", timeout=30).status_code == 404


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, kind = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: "):])))
    return events


def test_explain_stream_sends_the_prediction_and_fast_maps_first_then_each_deep_map(service):
    request = tiny_request(methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=8),
                                    method(pb.METHOD_SMOOTHGRAD, n_samples=4, seed=1)])
    grpc_events = list(service.stub().ExplainStream(request, timeout=60))
    with httpx.stream("POST", service.http_url + f"/v1/models/{TINY}:explainStream", json=as_json(request),
                      timeout=60) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        events = sse_events(answer)
    kinds = [kind for kind, _ in events]
    assert kinds == ["prediction"] + ["attribution"] * 4  # 2 targets x 2 deep methods
    parsed = [json_format.ParseDict(data, pb.ExplainEvent()) for _, data in events]
    assert [e.WhichOneof("event") for e in parsed] == kinds
    first = parsed[0].prediction
    assert {a.method for a in first.attributions} == {pb.METHOD_GRADCAM} and len(first.targets) == 2
    deep = {(e.attribution.method, e.attribution.target): e.attribution.map.data for e in parsed[1:]}
    assert deep == {(e.attribution.method, e.attribution.target): e.attribution.map.data
                    for e in grpc_events if e.WhichOneof("event") == "attribution"}


def test_a_stream_refused_before_it_starts_is_a_plain_error(service):
    body = as_json(tiny_request(methods=[method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=10**9)]))
    answer = post(service, f"/v1/models/{TINY}:explainStream", body)
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/json"
    assert answer.json()["field"] == "methods[0].integrated_gradients.n_steps"


@pytest.mark.parametrize(
    ("body", "status", "code", "field", "words"),
    [
        (b"{not json", 400, "INVALID_ARGUMENT", "body", "not valid JSON"),
        (b"[1, 2]", 400, "INVALID_ARGUMENT", "body", "JSON object"),
        (json.dumps({"targets": {"topK": "three"}}).encode(), 400, "INVALID_ARGUMENT", "targets.topK", "three"),
        (json.dumps({"methods": [{"method": "METHOD_NOPE"}]}).encode(), 400, "INVALID_ARGUMENT", "methods.method",
         "METHOD_NOPE"),
        (json.dumps({"imagez": "AAAA"}).encode(), 400, "INVALID_ARGUMENT", "imagez", "no field"),
        (json.dumps({"image": "not base64!"}).encode(), 400, "INVALID_ARGUMENT", "image", ""),
        (json.dumps({"image": base64.b64encode(b"just some bytes").decode()}).encode(), 400, "INVALID_ARGUMENT",
         "image", "not a decodable image"),
        (json.dumps({"image": base64.b64encode(tiny_png()).decode(), "targets": {"topK": 99}}).encode(), 400,
         "INVALID_ARGUMENT", "targets.top_k", ""),
    ],
)
def test_bad_bodies_get_the_status_and_name_the_field(service, body, status, code, field, words):
    answer = httpx.post(service.http_url + f"/v1/models/{TINY}:explain", content=body,
                        headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["code"] == code and error["field"] == field, error
    assert words in error["message"]


def test_unknown_models_routes_and_verbs_answer_json(service):
    missing = post(service, "/v1/models/nope:explain", {"image": base64.b64encode(tiny_png()).decode()})
    assert missing.status_code == 404 and missing.json()["field"] == "model"
    for path in ("/v1/nothing", "/v1/models/tinycnn:explode", "/no/such/page.html"):
        answer = httpx.get(service.http_url + path, timeout=30)
        assert answer.status_code == 404 and answer.json()["code"] == "NOT_FOUND", path
    wrong_verb = httpx.get(service.http_url + f"/v1/models/{TINY}:explain", timeout=30)
    assert wrong_verb.status_code in (404, 405) and wrong_verb.json()["code"] in ("NOT_FOUND", "UNIMPLEMENTED")


def test_oversized_bodies_are_refused_before_they_are_read(service):
    limit = routes.body_limit(service.config.max_message_bytes)
    by_length = httpx.post(service.http_url + f"/v1/models/{TINY}:explain", content=b"{" + b" " * limit + b"}",
                           timeout=60)
    assert by_length.status_code == 413
    assert by_length.json()["code"] == "RESOURCE_EXHAUSTED" and by_length.json()["field"] == "body"

    def chunks():  # no Content-Length: cut off while streaming
        for _ in range(limit // (1 << 20) + 2):
            yield b" " * (1 << 20)

    chunked = httpx.post(service.http_url + f"/v1/models/{TINY}:explain", content=chunks(), timeout=60)
    assert chunked.status_code == 413 and chunked.json()["field"] == "body"


def test_deadlines_come_from_x_request_timeout(service):
    body = as_json(tiny_request(methods=[method(pb.METHOD_SMOOTHGRAD, n_samples=1024),
                                         method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=1024)]))
    late = post(service, f"/v1/models/{TINY}:explain", body, headers={"x-request-timeout": "0.02"})
    assert late.status_code in (429, 504), late.text  # refused by admission, or ended at the deadline
    assert late.json()["code"] in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
    bad = post(service, f"/v1/models/{TINY}:explain", body, headers={"x-request-timeout": "soon"})
    assert bad.status_code == 400 and bad.json()["field"] == "x-request-timeout"


def test_kserve_v1_predict_and_explain(service):
    image = base64.b64encode(tiny_png()).decode()
    by_grpc = service.stub().Explain(pb.ExplainRequest(model=TINY, image=tiny_png()), timeout=60)
    predicted = post(service, f"/v1/models/{TINY}:predict", {"instances": [{"image_bytes": {"b64": image}}, image]})
    assert predicted.status_code == 200, predicted.text
    predictions = predicted.json()["predictions"]
    assert len(predictions) == 2 and predictions[0]["ids"] == [p.class_index for p in by_grpc.predictions]
    assert predictions[0]["displayNames"][0] == by_grpc.predictions[0].label

    parameters = {"methods": [{"method": "METHOD_GRADCAM"}], "targets": {"topK": 2}}
    explained = post(service, f"/v1/models/{TINY}:explain", {"instances": [{"b64": image}], "parameters": parameters})
    assert explained.status_code == 200, explained.text
    (explanation,) = explained.json()["explanations"]
    response = json_format.ParseDict(explanation, pb.ExplainResponse())
    assert [a.method for a in response.attributions] == [pb.METHOD_GRADCAM] * 2

    refused = post(service, f"/v1/models/{TINY}:predict", {"instances": [{"b64": "%%%"}]})
    assert refused.status_code == 400 and refused.json()["field"] == "instances[0].b64"
    not_image = post(service, f"/v1/models/{TINY}:predict", {"instances": [{"b64": base64.b64encode(b"xx").decode()}]})
    assert not_image.status_code == 400 and not_image.json()["field"] == "instances[0].b64"
    assert post(service, f"/v1/models/{TINY}:predict", {"instances": []}).json()["field"] == "instances"


def test_metrics_and_access_lines_carry_the_route(service, caplog):
    labels = {"rpc": routes.EXPLAIN, "model": TINY, "code": "OK"}
    before = service.metric("saliency_requests_total", labels)
    refused_before = service.metric("saliency_requests_total", {"rpc": routes.EXPLAIN, "model": "",
                                                                 "code": "INVALID_ARGUMENT"})
    with caplog.at_level(logging.INFO, logger="saliency.access"):
        assert post(service, f"/v1/models/{TINY}:explain", as_json(tiny_request()),
                    headers={"x-request-id": "abc-123"}).status_code == 200
        assert post(service, f"/v1/models/{TINY}:explain", {"nope": 1}).status_code == 400
    assert service.metric("saliency_requests_total", labels) == before + 1
    assert service.metric("saliency_requests_total", {"rpc": routes.EXPLAIN, "model": "",
                                                      "code": "INVALID_ARGUMENT"}) == refused_before + 1
    lines = [r for r in caplog.records if getattr(r, "rpc", "") == routes.EXPLAIN]
    assert [r.code for r in lines] == ["OK", "INVALID_ARGUMENT"]
    assert lines[0].request_id == "abc-123" and lines[0].model == TINY and lines[0].bytes_out > 0


def test_openapi_and_docs_are_served(service):
    schema = httpx.get(service.http_url + "/openapi.json", timeout=30).json()
    for path in ("/v1/models", "/v1/models/{model}:explain", "/v1/models/{model}:explainStream",
                 "/v1/models/{model}:predict", "/v1/endpoints/{endpoint}:explain",
                 "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:explain"):
        assert path in schema["paths"], path
    assert httpx.get(service.http_url + "/docs", timeout=30).status_code == 200


def test_auth_uses_the_grpc_token_store_and_its_reload(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token\n")
    service = ServiceThread(with_config(models=(TINY,), auth_tokens_file=str(tokens), reload_interval_s=0))
    try:
        url = service.http_url + "/v1/models"
        refused = httpx.get(url, timeout=30)
        assert refused.status_code == 401 and refused.json()["code"] == "UNAUTHENTICATED"
        assert httpx.get(url, headers={"authorization": "Bearer wrong"}, timeout=30).status_code == 401
        assert httpx.get(url, headers={"authorization": "Bearer first-token"}, timeout=30).status_code == 200
        body = as_json(tiny_request())
        explain = service.http_url + f"/v1/models/{TINY}:explain"
        assert httpx.post(explain, json=body, timeout=60).status_code == 401
        assert httpx.post(explain, json=body, headers={"authorization": "Bearer first-token"},
                          timeout=60).status_code == 200
        replace(tokens, b"second-token\n")
        assert service.call(service.service.reloader.check()) is True
        assert httpx.get(url, headers={"authorization": "Bearer first-token"}, timeout=30).status_code == 401
        assert httpx.get(url, headers={"authorization": "Bearer second-token"}, timeout=30).status_code == 200
        assert httpx.get(service.http_url + "/openapi.json", timeout=30).status_code == 200  # no data in it
    finally:
        service.stop()


def test_tls_uses_the_grpc_certificate_files_and_their_reload(tmp_path):
    _, old_ca_pem, old_ca = issue("old-ca")
    _, new_ca_pem, new_ca = issue("new-ca")
    key_pem, cert_pem, _ = issue("localhost", old_ca)
    key, cert = tmp_path / "tls.key", tmp_path / "tls.crt"
    key.write_bytes(key_pem)
    cert.write_bytes(cert_pem)
    service = ServiceThread(with_config(models=(TINY,), tls_cert_file=str(cert), tls_key_file=str(key),
                                        reload_interval_s=0))
    try:
        url = f"https://localhost:{service.service.http_port}/v1/models"

        def verified_by(ca_pem: bytes) -> httpx.Client:
            return httpx.Client(verify=ssl.create_default_context(cadata=ca_pem.decode()), timeout=30)

        with verified_by(old_ca_pem) as client:
            assert client.get(url).status_code == 200
        with pytest.raises(httpx.HTTPError):  # plaintext is not served on a TLS port
            httpx.get(url.replace("https", "http", 1), timeout=5).raise_for_status()
        new_key_pem, new_cert_pem, _ = issue("localhost", new_ca)
        replace(key, new_key_pem)
        replace(cert, new_cert_pem)
        assert service.call(service.service.reloader.check()) is True
        with verified_by(new_ca_pem) as client:
            assert client.get(url).status_code == 200
        with verified_by(old_ca_pem) as client, pytest.raises(httpx.ConnectError):
            client.get(url)
    finally:
        service.stop()


def test_http_can_be_turned_off():
    service = ServiceThread(with_config(models=(TINY,), http_enabled=False))
    try:
        assert service.service.http is None and service.http_url is None
        assert service.stub().ListModels(pb.ListModelsRequest(), timeout=30).models
    finally:
        service.stop()


def test_http_calls_get_spans_named_by_the_route_under_the_callers_trace():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import format_trace_id

    exporter = InMemorySpanExporter()
    service = ServiceThread(with_config(models=(TINY,)), span_exporter=exporter)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        answer = post(service, f"/v1/models/{TINY}:explain", as_json(tiny_request()),
                      headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert answer.status_code == 200
    finally:
        service.stop()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == routes.EXPLAIN]
    assert format_trace_id(span.context.trace_id) == trace_id
    assert span.attributes["saliency.model"] == TINY
    assert span.attributes["saliency.request_id"] == answer.headers["x-request-id"]


def test_sigterm_lets_http_calls_in_flight_finish():
    import signal
    import threading
    import time

    from service_harness import ServerProcess

    server = ServerProcess("--models", TINY, "--max-chunk", "4", "--max-chunk-forward", "4", "--grace-s", "30")
    try:
        body = as_json(tiny_request(targets=pb.Targets(top_k=5), methods=[
            method(pb.METHOD_SMOOTHGRAD, n_samples=1024), method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=1024)]))
        answers = []
        call = threading.Thread(target=lambda: answers.append(
            httpx.post(server.http_url + f"/v1/models/{TINY}:explain", json=body, timeout=120)))
        call.start()
        deadline = time.monotonic() + 60
        while server.metric("saliency_inflight_requests", {"model": TINY}) < 1:  # the call is being served
            assert time.monotonic() < deadline and call.is_alive(), "the call never started"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        call.join(timeout=120)
        assert answers and answers[0].status_code == 200, answers and answers[0].text
        assert len(answers[0].json()["attributions"]) == 10
        assert server.process.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.http_url + "/v1/models", timeout=5)
    finally:
        server.stop()


def test_a_client_that_leaves_a_stream_cancels_its_call(service):
    import time

    labels = {"rpc": routes.EXPLAIN_STREAM, "model": TINY, "code": "CANCELLED"}
    before = service.metric("saliency_requests_total", labels)
    body = as_json(tiny_request(targets=pb.Targets(top_k=5), methods=[
        method(pb.METHOD_GRADCAM), method(pb.METHOD_SMOOTHGRAD, n_samples=1024),
        method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=1024)]))
    with httpx.stream("POST", service.http_url + f"/v1/models/{TINY}:explainStream", json=body,
                      timeout=60) as answer:
        lines = answer.iter_lines()
        assert next(lines) == "event: prediction"  # then the client goes away
    deadline = time.monotonic() + 30
    while service.metric("saliency_requests_total", labels) < before + 1:
        assert time.monotonic() < deadline, "the stream's call was not cancelled"
        time.sleep(0.05)
    while service.metric("saliency_inflight_requests", {"model": TINY}) > 0:
        assert time.monotonic() < deadline, "the cancelled call still holds its slot"
        time.sleep(0.05)
