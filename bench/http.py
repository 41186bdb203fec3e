"""The HTTP/JSON API's fast-pass latency against gRPC and the in-process fast pass (DESIGN §6:
HTTP/JSON adds <= 35 %), and JSON + base64 against binary protobuf on the same routes.

Every contender computes the same thing: prediction + vanilla + input x gradient + Grad-CAM for
the top-1 class of the reference image. The service (embedded backend, 127.0.0.1, this process)
gets the normalised input as a tensor (no image decoding, which the in-process call does not do
either) and answers float32 maps; the HTTP clients decode what they get (JSON parsed and the maps
base64-decoded, or the protobuf parsed), as the gRPC stub does.
"""

from __future__ import annotations

import base64
import json

import httpx
from google.protobuf import json_format

from bench import contenders as c
from bench.report import Table, at_most, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from bench.torchserve import _log, _Service
from bench.workload import MODEL_NAME, reference_workload
from saliency.attribution.types import Targets
from saliency.codec import convert
from saliency.http import codec
from saliency.runtime.config import ServiceConfig
from saliency.v1 import explainer_pb2 as pb

SUMMARY = "fast pass p50: in-process vs gRPC vs HTTP JSON vs HTTP protobuf"
IN_PROCESS = "in-process fast pass"
GRPC = "gRPC Explain"
HTTP_JSON = "HTTP :explain, JSON + base64"
HTTP_PROTOBUF = "HTTP :explain, application/x-protobuf"
HTTP_JSON_F16 = "HTTP :explain, JSON, float16 maps"
PROTOBUF = "application/x-protobuf"


def _decode_json(content: bytes) -> int:
    """Parse a JSON ExplainResponse and decode its maps, as a client would; returns map bytes."""
    answer = json.loads(content)
    return sum(len(base64.b64decode(a["map"]["data"])) for a in answer["attributions"])


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    repeats = settings.pick(40, 10)
    config = ServiceConfig(
        port=0, metrics_port=0, http_port=0, models=(MODEL_NAME,), device=settings.device,
        max_chunk=8, max_chunk_forward=4, reflection=False, explanation_cache_bytes=0,
    )
    request = pb.ExplainRequest(
        model=MODEL_NAME,
        tensor=convert.tensor_to_proto(w.x.cpu()),
        targets=convert.targets_to_proto(Targets(top_k=1)),
        methods=convert.method_requests_to_proto(dict.fromkeys(c.FAST_METHODS)),
    )
    half = pb.ExplainRequest()
    half.CopyFrom(request)
    half.output.map_dtype = pb.DTYPE_FLOAT16
    json_body = json_format.MessageToJson(request, indent=None).encode()
    half_body = json_format.MessageToJson(half, indent=None).encode()
    binary_body = request.SerializeToString()
    _log("starting the service (embedded backend, gRPC and HTTP)")
    service = _Service(config)
    url = f"http://127.0.0.1:{service.running.http_port}/v1/models/{MODEL_NAME}:explain"
    client = httpx.Client(timeout=120)  # one kept-alive connection, as the gRPC channel
    sizes: dict[str, tuple[int, int]] = {}
    service_answer = pb.ExplainResponse()

    def over_json(body: bytes, name: str) -> None:
        answer = client.post(url, content=body, headers={"content-type": "application/json"})
        answer.raise_for_status()
        _decode_json(answer.content)
        sizes[name] = (len(body), len(answer.content))

    def over_protobuf() -> None:
        answer = client.post(url, content=binary_body, headers={"content-type": PROTOBUF, "accept": PROTOBUF})
        answer.raise_for_status()
        pb.ExplainResponse.FromString(answer.content)
        sizes[HTTP_PROTOBUF] = (len(binary_body), len(answer.content))

    def over_grpc() -> None:
        nonlocal service_answer
        service_answer = service.stub.Explain(request, timeout=120)
        sizes[GRPC] = (request.ByteSize(), service_answer.ByteSize())

    try:
        contenders = {
            IN_PROCESS: lambda: c.ours_fast(w, 1),
            GRPC: over_grpc,
            HTTP_JSON: lambda: over_json(json_body, HTTP_JSON),
            HTTP_PROTOBUF: over_protobuf,
            HTTP_JSON_F16: lambda: over_json(half_body, HTTP_JSON_F16),
        }
        _log(f"{len(contenders)} contenders, {repeats} interleaved repeats")
        timings = interleaved(contenders, repeats, warmup=3, sync=w.sync)
    finally:
        client.close()
        service.close()
    goals = {
        GRPC: at_most(1.25, "<= 1.25 (gRPC adds <= 25 %)"),
        HTTP_JSON: at_most(1.35, "<= 1.35 (HTTP/JSON adds <= 35 %)"),
        HTTP_PROTOBUF: at_most(1.35, "<= 1.35"),
    }
    notes = {name: f"request {sent / 1024:.0f} KiB, answer {got / 1024:.0f} KiB" for name, (sent, got) in sizes.items()}
    latency = Table(
        "HTTP overhead: fast pass p50 (prediction + vanilla + input x gradient + Grad-CAM, top-1)",
        "ms", IN_PROCESS, "t / t(in-proc)", time_rows(timings, goals, notes),
        ["the service gets the normalised input [3, 224, 224] as a float32 tensor; p50 = median of "
         "interleaved calls, one at a time, one kept-alive connection each; clients decode the answer; "
         "explanation cache off"],
    )
    encodings = Table(
        "HTTP encodings against gRPC: the same call's p50",
        "ms", GRPC, "t / t(gRPC)",
        time_rows({name: timings[name] for name in (GRPC, HTTP_PROTOBUF, HTTP_JSON, HTTP_JSON_F16)}, notes=notes),
        ["JSON carries bytes as base64 (4/3 larger); float16 maps halve the answer"],
    )
    return [latency, encodings, _codec_table(service_answer, repeats)]


def _codec_table(answer: pb.ExplainResponse, repeats: int) -> Table:
    """Encoding and decoding one answer, in this process: the CPU each encoding costs."""
    as_json = codec.encode_message(answer, protobuf=False)
    as_protobuf = answer.SerializeToString()
    contenders = {
        "protobuf: serialize + parse": lambda: pb.ExplainResponse.FromString(answer.SerializeToString()),
        "JSON: encode + parse + base64-decode the maps": lambda: _decode_json(codec.encode_message(answer, False)),
    }
    timings = interleaved(contenders, repeats * 5, warmup=3)
    return Table(
        f"one answer's encoding ({len(answer.attributions)} maps of 224 x 224 float32): "
        f"{len(as_protobuf) / 1024:.0f} KiB protobuf, {len(as_json) / 1024:.0f} KiB JSON",
        "ms", "protobuf: serialize + parse", "t / t(protobuf)", time_rows(timings),
        ["server encode + client decode, no network; the service encodes off its event loop"],
    )
