"""TorchServe: the custom handler, the model archives and the torchserve backend, against a real
TorchServe 0.12 (Java 17 + torchserve from PyPI).

One TorchServe serves the whole module (it takes 20-40 s to start): started the way
`saliency serve --backend torchserve` starts it, from deploy/torchserve/config.properties, with
archives from `make models`, on free loopback ports in a temp working dir. The services under
test attach to it; one more test starts a service that launches (and stops) its own.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import torch
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.registry import get_method, make_params
from saliency.attribution.types import Targets
from saliency.codec import convert, method_params, tensors
from saliency.runtime.config import ServiceConfig
from saliency.torchserve.batch import HandlerSettings, RowInput
from saliency.torchserve.process import (
    HARDENED,
    KeyFile,
    TorchServeProcess,
    describe,
    models_property,
    read_properties,
    render_properties,
)
from saliency.torchserve_api import inference_pb2 as ts_pb
from saliency.torchserve_api import inference_pb2_grpc as ts_grpc
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import torchserve_pb2 as reply_pb
from service_harness import ServiceThread, chelsea_png, with_config

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "model_store"
DEPLOY_CONFIG = ROOT / "deploy" / "torchserve" / "config.properties"
MODELS = ("efficientnet_lite0", "tinycnn")
HANDLER_METRICS = ("SaliencyBatchRows", "SaliencyRows", "SaliencyMethodComputeSeconds", "SaliencyChunkSamples")

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17 (java on PATH)")


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archives() -> Path:
    """`make models`: builds model_store/*.mar when missing or older than the handler/config."""
    subprocess.run(["make", "-s", "models"], cwd=ROOT, check=True, timeout=900)
    return STORE


@pytest.fixture(scope="module")
def torchserve(archives):
    process = TorchServeProcess.start(archives, DEPLOY_CONFIG, MODELS, timeout_s=300)
    yield process
    process.stop()
    assert not process.alive()


@pytest.fixture(scope="module")
def ts_service(torchserve):
    """The service with the torchserve backend, attached to the module's TorchServe."""
    service = ServiceThread(
        with_config(
            backend="torchserve",
            torchserve_address=torchserve.grpc_address,
            torchserve_key_file=str(torchserve.key_file),
            torchserve_management_address=torchserve.management_address,
        )
    )
    wait_for_health(service, health_pb2.HealthCheckResponse.SERVING, timeout=60)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def embedded():
    service = ServiceThread(with_config(backend="embedded"))
    yield service
    service.stop()


# ---- helpers ----------------------------------------------------------------------------------


def wait_for_health(service: ServiceThread, status: int, timeout: float) -> None:
    stub = health_pb2_grpc.HealthStub(service.channel())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"health did not become {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")


def decode_map(t: pb.Tensor) -> np.ndarray:
    dtype = np.float16 if t.dtype == pb.DTYPE_FLOAT16 else np.float32
    return np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape)).astype(np.float32)


def by_key(response: pb.ExplainResponse) -> dict[tuple[int, int], pb.Attribution]:
    return {(a.method, a.target): a for a in response.attributions}


def is_timing(stat: str) -> bool:
    """Timings (queue_ms, compute_ms, XRAI's segmentation_ms, ...) differ from run to run."""
    return stat.endswith("_ms")


def assert_same_response(got: pb.ExplainResponse, want: pb.ExplainResponse) -> None:
    """Equal predictions, targets, maps (float tolerance), overlays and non-timing stats."""
    assert [p.class_index for p in got.predictions] == [p.class_index for p in want.predictions]
    assert [p.label for p in got.predictions] == [p.label for p in want.predictions]
    np.testing.assert_allclose([p.logit for p in got.predictions], [p.logit for p in want.predictions], rtol=1e-5, atol=1e-5)
    assert list(got.targets) == list(want.targets)
    g, w = by_key(got), by_key(want)
    assert set(g) == set(w)
    for key in w:
        assert g[key].map.dtype == w[key].map.dtype and list(g[key].map.shape) == list(w[key].map.shape)
        np.testing.assert_allclose(decode_map(g[key].map), decode_map(w[key].map), rtol=1e-3, atol=1e-4, err_msg=str(key))
        assert bool(g[key].overlay_png) == bool(w[key].overlay_png)
        assert set(g[key].stats) == set(w[key].stats)
        for name in {n for n in w[key].stats if not is_timing(n)}:
            assert g[key].stats[name] == pytest.approx(w[key].stats[name], rel=1e-3, abs=1e-5), (key, name)


def explain_request(model: str, x_or_png, methods: dict, targets: Targets, **output) -> pb.ExplainRequest:
    request = pb.ExplainRequest(
        model=model,
        targets=convert.targets_to_proto(targets),
        methods=method_params.method_requests_to_proto(methods),
        output=pb.OutputOptions(**output),
    )
    if isinstance(x_or_png, torch.Tensor):
        request.tensor.CopyFrom(tensors.tensor_to_proto(x_or_png))
    else:
        request.image = x_or_png
    return request


def tiny_input(seed: int) -> torch.Tensor:
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed))


def scrape(process: TorchServeProcess) -> str:
    with urllib.request.urlopen(process.metrics_url, timeout=10) as response:
        return response.read().decode()


def sample(text: str, metric: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(metric) : line.index("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def predict(process: TorchServeProcess, registration: str, inputs: dict[str, bytes], key: str | None, timeout: float = 120):
    metadata = [("authorization", f"Bearer {key}")] if key else []
    with grpc.insecure_channel(process.grpc_address) as channel:
        return ts_grpc.InferenceAPIsServiceStub(channel).Predictions(
            ts_pb.PredictionsRequest(model_name=registration, input=inputs), metadata=metadata, timeout=timeout
        )


def _ipv4(address: str) -> str:
    """An IPv4-mapped IPv6 address (how Java's sockets report) as plain IPv4."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def load_handler_module():
    """handlers/saliency_handler.py as TorchServe imports it: a module file, not a package."""
    spec = importlib.util.spec_from_file_location("saliency_handler", ROOT / "handlers" / "saliency_handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the deploy config and the archives (no TorchServe needed) --------------------------------


def test_deploy_config_is_hardened_and_matches_the_archives(archives):
    settings = read_properties(DEPLOY_CONFIG)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert settings[key].startswith("http://127.0.0.1:"), key
    assert settings["grpc_inference_address"] == settings["grpc_management_address"] == "127.0.0.1"
    for key, value in HARDENED.items():
        assert settings[key] == value, key
    assert settings["allowed_urls"] == f"file://{settings['model_store']}/.*"
    size = str(ServiceConfig().max_message_bytes)
    assert settings["max_request_size"] == settings["max_response_size"] == size
    assert settings["metrics_config"] == f"{settings['model_store']}/metrics.yaml"
    # The registrations' batching is the archives' (model-config.yaml), loaded at start only.
    assert json.loads(settings["models"]) == models_property(archives, ["efficientnet_lite0"])
    assert settings["load_models"].split(",") == [
        "efficientnet_lite0=efficientnet_lite0.mar", "efficientnet_lite0-deep=efficientnet_lite0.mar",
    ]
    # Every metric the handler emits is declared (TorchServe drops undeclared ones).
    declared = yaml.safe_load((STORE / "metrics.yaml").read_text())["model_metrics"]
    names = {m["name"] for kind in declared.values() for m in kind}
    assert set(HANDLER_METRICS) <= names
    handler = (ROOT / "service" / "saliency" / "torchserve" / "handler.py").read_text()
    assert set(re.findall(r'"(Saliency\w+)"', handler)) == set(HANDLER_METRICS)


def test_rendered_config_enforces_hardening_whatever_the_base_says(archives, tmp_path):
    base = {
        "inference_address": "http://0.0.0.0:8080",
        "grpc_inference_address": "0.0.0.0",
        "disable_token_authorization": "true",
        "enable_model_api": "true",
        "install_py_dep_per_model": "true",
        "allowed_urls": ".*",
        "vmargs": "-Xmx1g -Djava.io.tmpdir=/tmp",
        "load_models": "all",
    }
    ports = dict.fromkeys(
        ["inference_address", "management_address", "metrics_address", "grpc_inference_port", "grpc_management_port"], 1
    )
    settings = render_properties(base, archives, ["tinycnn"], ports, tmp_path)
    assert {k: settings[k] for k in HARDENED} == HARDENED
    assert settings["inference_address"] == "http://127.0.0.1:1"
    assert settings["grpc_inference_address"] == settings["grpc_management_address"] == "127.0.0.1"
    assert re.fullmatch(settings["allowed_urls"], f"file://{archives.resolve()}/tinycnn.mar")
    assert not re.fullmatch(settings["allowed_urls"], "https://example.com/x.mar")
    assert settings["vmargs"] == f"-Xmx1g -Djava.io.tmpdir={tmp_path}"
    assert "load_models" not in settings
    assert set(json.loads(settings["models"])) == {"tinycnn", "tinycnn-deep"}


def test_archive_config_keeps_per_registration_settings_off_the_top_level():
    """TorchServe would apply top-level batching keys of an archive to both registrations."""
    for model in MODELS:
        config = yaml.safe_load((STORE / model / "model-config.yaml").read_text())
        assert not {"batchSize", "maxBatchDelay", "minWorkers", "maxWorkers"} & set(config)
        settings = HandlerSettings.from_model_config(config, default_model=model)
        assert settings.model == model and set(settings.registrations) == {"fast", "deep"}
        assert settings.registrations["deep"]["batchSize"] > 1


# ---- the handler, called directly ---------------------------------------------------------------


def handler_context(registration: str, model: str):
    """TorchServe's own Context and metrics cache, as its worker builds them."""
    import ts
    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(str(STORE / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = registration
    config = yaml.safe_load((STORE / model / "model-config.yaml").read_text())
    manifest = {"model": {"modelName": registration, "handler": "saliency_handler.py"}}
    return Context(registration, str(STORE), manifest, 8, None, ts.__version__, metrics=metrics, model_yaml_config=config)


def run_handler(handler, context, rows: list) -> list[reply_pb.HandlerReply]:
    context.request_ids = {i: f"req-{i}" for i in range(len(rows))}
    context.metrics.request_ids = context.request_ids
    replies = handler.handle(rows, context)
    assert len(replies) == len(rows)
    return [reply_pb.HandlerReply.FromString(r) for r in replies]


def test_handle_answers_each_row_of_a_fast_batch_on_its_own(tiny):
    handler = load_handler_module().SaliencyHandler()
    context = handler_context("tinycnn", "tinycnn")
    handler.initialize(context)
    x0, x1 = tiny_input(0), tiny_input(1)
    good0 = explain_request("tinycnn", x0, {"vanilla": None, "gradcam": None}, Targets(top_k=2))
    good1 = explain_request("tinycnn", x1, {"vanilla": None, "gradcam": None}, Targets(classes=(3,)))
    other = explain_request("tinycnn", x1, {"eigencam": None}, Targets(top_k=1))
    nan = explain_request("tinycnn", torch.full((3, 32, 32), float("nan")), {"vanilla": None}, Targets())
    deep = explain_request("tinycnn", x0, {"ig": None}, Targets())
    wrong_model = explain_request("efficientnet_lite0", x0, {"vanilla": None}, Targets())
    rows = [
        {"body": good0.SerializeToString()},
        {"body": b"\xff\x00 not a protobuf"},
        {"data": bytearray(good1.SerializeToString())},  # REST puts the body under `data`
        {"body": nan.SerializeToString()},
        {"body": deep.SerializeToString()},
        {"body": wrong_model.SerializeToString()},
        {},
        {"body": good0.SerializeToString(), "deadline_unix_ms": str(int((time.time() - 1) * 1000)).encode()},
        {"body": other.SerializeToString()},
    ]
    replies = run_handler(handler, context, rows)
    codes = [r.code for r in replies]
    assert codes == [0, 3, 0, 3, 3, 5, 3, 4, 0], [r.message for r in replies]
    assert replies[1].message.startswith("body:")
    assert replies[3].message.startswith("tensor:") and "NaN" in replies[3].message
    assert "tinycnn-deep" in replies[4].message
    assert all(r.batch_rows == len(rows) for r in replies)
    # The good rows, computed together, equal each one computed alone in-process.
    engine = Engine(tiny, ChunkSizes(8, 16))
    for reply, x, targets, methods in (
        (replies[0], x0, Targets(top_k=2), ("vanilla", "gradcam")),
        (replies[2], x1, Targets(classes=(3,)), ("vanilla", "gradcam")),
        (replies[8], x1, Targets(top_k=1), ("eigencam",)),
    ):
        local = engine.explain(x, targets, {m: make_params(m) for m in methods})
        assert list(reply.response.targets) == list(local.targets)
        assert [p.class_index for p in reply.response.predictions] == [p.class_index for p in local.predictions]
        got = {(method_params.METHOD_NAMES[a.method], a.target): decode_map(a.map) for a in reply.response.attributions}
        assert set(got) == {(a.method, a.target) for a in local.attributions}
        for a in local.attributions:
            np.testing.assert_allclose(got[a.method, a.target], a.map.numpy(), rtol=1e-4, atol=1e-6)
        assert reply.logits.shape == [tiny.spec.num_classes]


def test_handle_drops_a_deep_row_whose_deadline_passes_and_finishes_the_others(effnet, chelsea):
    handler = load_handler_module().SaliencyHandler()
    context = handler_context("efficientnet_lite0-deep", "efficientnet_lite0")
    handler.initialize(context)
    slow = explain_request("efficientnet_lite0", chelsea, {"ig": {"n_steps": 200}}, Targets(classes=(285,)))
    quick = explain_request("efficientnet_lite0", chelsea, {"ig": {"n_steps": 6}}, Targets(top_k=1))
    bad = explain_request("efficientnet_lite0", chelsea, {"ig": {"n_steps": 0}}, Targets())
    rows = [
        {"body": slow.SerializeToString(), "deadline_unix_ms": str(int((time.time() + 1.0) * 1000)).encode()},
        {"body": quick.SerializeToString()},
        {"body": bad.SerializeToString()},
    ]
    outcome_started = time.perf_counter()
    replies = run_handler(handler, context, rows)
    seconds = time.perf_counter() - outcome_started
    assert [r.code for r in replies] == [4, 0, 3], [r.message for r in replies]
    assert "still being computed" in replies[0].message
    assert "n_steps" in replies[2].message
    # The expired row stopped costing compute: far less than its 202 samples ran.
    computed = handler.runner.executor.stats.samples
    assert computed < 202, computed
    assert seconds < 60
    # The surviving row: top-1 resolved in the deep pass, its IG map equal to the unbatched one.
    (ig,) = replies[1].response.attributions
    assert list(replies[1].response.targets) == [285] and ig.target == 285
    local = Engine(effnet, ChunkSizes(8, 4)).explain(chelsea, Targets(classes=(285,)), {"ig": make_params("ig", n_steps=6)})
    np.testing.assert_allclose(decode_map(ig.map), local.attributions[0].map.numpy(), rtol=1e-3, atol=1e-5)
    assert ig.stats["samples"] == 8


def test_row_input_never_raises_on_odd_rows():
    assert RowInput.from_torchserve(None).body is None
    assert RowInput.from_torchserve({"body": "text"}).body == b"text"
    assert RowInput.from_torchserve({"body": {"json": 1}}).body == b'{"json": 1}'
    row = RowInput.from_torchserve({"body": b"x", "deadline_unix_ms": b"soon", "traceparent": b"00-ab"})
    assert row.deadline is None and row.traceparent == "00-ab"


# ---- over a real TorchServe --------------------------------------------------------------------


def test_torchserve_backend_answers_as_the_embedded_backend(ts_service, embedded):
    requests = [
        explain_request(
            "efficientnet_lite0",
            chelsea_png(),
            {
                "vanilla": None, "input_x_gradient": None, "gradcam": None, "gradcam_pp": None,
                "eigencam": None, "cam": None, "ig": {"n_steps": 12}, "smoothgrad": {"n_samples": 6, "seed": 7},
            },
            Targets(top_k=2),
        ),
        # Explicit classes: the fast and the deep call go to TorchServe at once.
        explain_request(
            "tinycnn",
            tiny_input(5),
            {"vanilla": {"reduction": "l2"}, "rise": {"n_masks": 64, "seed": 3}, "occlusion": {"window": 8, "stride": 4},
             "scorecam": None, "guided_backprop": None, "guided_gradcam": None},
            Targets(classes=(1, 4)),
            map_dtype=pb.DTYPE_FLOAT16, normalization=pb.NORMALIZATION_MIN_MAX, include_overlay=True,
        ),
        explain_request("tinycnn", tiny_input(6), {}, Targets(top_k=3)),  # a prediction only
        # The propagation, SHAP-family, LIME and XRAI methods go through the same handler.
        explain_request(
            "tinycnn",
            tiny_input(7),
            {"deeplift": None, "lrp": {"rule": "alpha2_beta1"}, "gradient_shap": {"n_samples": 6, "seed": 2},
             "kernel_shap": {"n_samples": 24, "n_segments": 9}, "lime": {"n_samples": 24, "n_segments": 9},
             "xrai": {"n_steps": 4}},
            Targets(classes=(2,)),
        ),
    ]
    for request in requests:
        got = ts_service.stub().Explain(request, timeout=180)
        want = embedded.stub().Explain(request, timeout=180)
        assert_same_response(got, want)
        assert got.model == want.model == request.model
    assert got.request_id  # generated by the service, as with the embedded backend
    # Streaming: the prediction first, then each deep map.
    events = list(ts_service.stub().ExplainStream(requests[1], timeout=180))
    assert events[0].WhichOneof("event") == "prediction"
    assert {e.WhichOneof("event") for e in events[1:]} == {"attribution"}
    deep = [m for m in requests[1].methods if get_method(method_params.METHOD_NAMES[m.method]).kind == "deep"]
    assert len(events) - 1 == 2 * len(deep) == 10  # five deep methods, two classes
    latency = ts_service.metric(
        "saliency_method_latency_seconds_count", {"model": "tinycnn", "method": "rise", "backend": "torchserve"}
    )
    assert latency >= 2


def test_errors_map_to_the_same_status_codes(ts_service, embedded):
    bad = [
        explain_request("tinycnn", tiny_input(0), {"ig": {"n_steps": 0}}, Targets()),
        explain_request("nope", tiny_input(0), {"vanilla": None}, Targets()),
        explain_request("tinycnn", torch.zeros(3, 4, 4), {"vanilla": None}, Targets()),
    ]
    for request in bad:
        codes = []
        for service in (ts_service, embedded):
            with pytest.raises(grpc.RpcError) as caught:
                service.stub().Explain(request, timeout=60)
            codes.append((caught.value.code(), caught.value.details()))
        assert codes[0] == codes[1]


def test_concurrent_deep_requests_share_a_handler_batch_and_equal_unbatched(ts_service, torchserve, tiny):
    before = scrape(torchserve)
    labels = {"ModelName": "tinycnn-deep"}
    batches_before = sample(before, "SaliencyBatchRows_count", **labels)
    single_before = sample(before, "SaliencyBatchRows_bucket", le="1.0", **labels)
    rows_before = sample(before, "SaliencyBatchRows_sum", **labels)
    n = 6
    inputs = [(tiny_input(100 + i), i % 10) for i in range(n)]
    requests = [
        explain_request("tinycnn", x, {"ig": {"n_steps": 24}}, Targets(classes=(c,))) for x, c in inputs
    ]
    barrier = threading.Barrier(n)

    def call(request):
        barrier.wait()
        return ts_service.stub().Explain(request, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(call, requests))
    after = scrape(torchserve)
    batches = sample(after, "SaliencyBatchRows_count", **labels) - batches_before
    single = sample(after, "SaliencyBatchRows_bucket", le="1.0", **labels) - single_before
    rows = sample(after, "SaliencyBatchRows_sum", **labels) - rows_before
    assert rows == n
    assert batches < n and batches - single >= 1, (batches, single)  # a handler batch held >= 2 rows
    engine = Engine(tiny, ChunkSizes(8, 16))
    for (x, c), response in zip(inputs, responses):
        (a,) = response.attributions
        local = engine.explain(x, Targets(classes=(c,)), {"ig": make_params("ig", n_steps=24)})
        np.testing.assert_allclose(decode_map(a.map), local.attributions[0].map.numpy(), rtol=1e-4, atol=1e-6)
    # The handler's per-method metric is on TorchServe's /metrics too.
    assert sample(after, "SaliencyMethodComputeSeconds_count", Method="ig", **labels) >= n


def test_a_bad_row_fails_alone_inside_a_torchserve_batch(torchserve):
    key = KeyFile(torchserve.key_file).inference_key()
    good = [
        explain_request("tinycnn", tiny_input(200 + i), {"smoothgrad": {"n_samples": 16, "seed": i}}, Targets(classes=(i,)))
        for i in range(4)
    ]
    bodies = [g.SerializeToString() for g in good] + [b"garbage", explain_request("tinycnn", tiny_input(0), {"vanilla": None}, Targets()).SerializeToString()]
    barrier = threading.Barrier(len(bodies))

    def call(body: bytes) -> reply_pb.HandlerReply:
        barrier.wait()
        return reply_pb.HandlerReply.FromString(predict(torchserve, "tinycnn-deep", {"body": body}, key).prediction)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(call, bodies))
    assert [r.code for r in replies] == [0, 0, 0, 0, 3, 3], [r.message for r in replies]
    assert "fast method" in replies[5].message
    assert max(r.batch_rows for r in replies) >= 2  # they did share batches
    for r in replies[:4]:
        assert len(r.response.attributions) == 1


def test_torchserve_is_hardened(torchserve):
    java = next(p for p in psutil.Process(torchserve.process.pid).children(recursive=True) if p.name() == "java")
    listening = {
        (_ipv4(c.laddr.ip), c.laddr.port) for c in java.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    }
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening  # Java's IPv6 sockets: ::ffff:127.0.0.1
    assert {port for _, port in listening} == set(torchserve.ports.values())
    keys = KeyFile(torchserve.key_file)
    # Inference without the key, or with the wrong one, is refused (REST and gRPC).
    request = urllib.request.Request(f"{torchserve.inference_url}/predictions/tinycnn", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code in (400, 401, 403)
    for key in (None, "wrong-key"):
        with pytest.raises(grpc.RpcError) as caught:
            predict(torchserve, "tinycnn", {"body": b""}, key, timeout=10)
        assert caught.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
    # Registering or unregistering a model over the management API is refused, even with its
    # key (enable_model_api=false); without the key, the management API refuses everything.
    management = f"http://{torchserve.management_address}"
    auth = {"Authorization": f"Bearer {keys.management_key()}"}
    for method, path in (
        ("POST", f"/models?url=file://{STORE.resolve()}/tinycnn.mar&model_name=extra"),
        ("POST", "/models?url=https://example.com/x.mar"),
        ("DELETE", "/models/tinycnn"),
    ):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(management + path, method=method, headers=auth), timeout=10)
        assert caught.value.code == 405, (method, path, caught.value.code)
    for method, path in (("GET", "/models"), ("PUT", "/models/tinycnn?min_worker=3")):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(management + path, method=method), timeout=10)
        assert caught.value.code in (400, 401, 403), (method, path, caught.value.code)
    listed = describe(torchserve.management_address, keys.management_key(), "tinycnn")
    assert listed["minWorkers"] == 1 and listed["modelUrl"] == "tinycnn.mar"
    rendered = read_properties(torchserve.workdir / "config.properties")
    assert {k: rendered[k] for k in HARDENED} == HARDENED


def test_worker_death_is_unavailable_and_reported_by_health(ts_service, torchserve, chelsea):
    keys = KeyFile(torchserve.key_file)
    pid = describe(torchserve.management_address, keys.management_key(), "efficientnet_lite0-deep")["workers"][0]["pid"]
    worker = psutil.Process(pid)
    statuses: list[int] = []
    watch = health_pb2_grpc.HealthStub(ts_service.channel()).Watch(health_pb2.HealthCheckRequest(), timeout=240)

    def follow() -> None:
        try:
            statuses.extend(r.status for r in watch)
        except grpc.RpcError as exc:  # cancelled below, once seen through
            assert exc.code() == grpc.StatusCode.CANCELLED

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    long = explain_request("efficientnet_lite0", chelsea, {"ig": {"n_steps": 400}}, Targets(classes=(285,)))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        cpu_before = sum(worker.cpu_times()[:2])
        call = pool.submit(ts_service.stub().Explain, long, timeout=180)
        deadline = time.monotonic() + 120
        while sum(worker.cpu_times()[:2]) - cpu_before < 0.5:  # the worker is computing our row
            assert time.monotonic() < deadline and not call.done(), "the deep worker never started"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as caught:
            call.result(timeout=120)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "efficientnet_lite0-deep" in caught.value.details()
    # TorchServe restarts the worker; health goes NOT_SERVING meanwhile, then SERVING again.
    wait_for_health(ts_service, health_pb2.HealthCheckResponse.NOT_SERVING, timeout=30)
    wait_for_health(ts_service, health_pb2.HealthCheckResponse.SERVING, timeout=180)
    watch.cancel()
    watcher.join(timeout=10)
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses, statuses
    assert statuses[-1] == health_pb2.HealthCheckResponse.SERVING
    new_pid = describe(torchserve.management_address, keys.management_key(), "efficientnet_lite0-deep")["workers"][0]["pid"]
    assert new_pid != pid
    ok = ts_service.stub().Explain(
        explain_request("efficientnet_lite0", chelsea, {"ig": {"n_steps": 4}}, Targets(classes=(285,))), timeout=120
    )
    assert len(ok.attributions) == 1
    assert ts_service.metric("saliency_rejected_total", {"model": "efficientnet_lite0", "reason": "backend_unavailable"}) >= 1


def test_renewed_keys_are_picked_up(ts_service, torchserve):
    keys = KeyFile(torchserve.key_file, torchserve.management_address)
    old = keys.inference_key()
    keys.RENEW_BEFORE_S = 10**9  # every key counts as about to expire
    assert keys.renew_if_due()
    assert keys.inference_key() != old
    with pytest.raises(grpc.RpcError):
        predict(torchserve, "tinycnn", {"body": b""}, old, timeout=10)
    response = ts_service.stub().Explain(explain_request("tinycnn", tiny_input(1), {"vanilla": None}, Targets()), timeout=60)
    assert len(response.attributions) == 1
    wait_for_health(ts_service, health_pb2.HealthCheckResponse.SERVING, timeout=10)


def test_serve_backend_torchserve_starts_and_stops_its_own(archives, tiny):
    """`saliency serve --backend torchserve` with no address: it launches TorchServe itself."""
    service = ServiceThread(
        with_config(
            backend="torchserve",
            models=("tinycnn",),
            torchserve_model_store=str(archives),
            torchserve_config=str(DEPLOY_CONFIG),
        )
    )
    process = service.service.backend.process
    try:
        assert process is not None and process.alive()
        wait_for_health(service, health_pb2.HealthCheckResponse.SERVING, timeout=30)
        x = tiny_input(9)
        response = service.stub().Explain(explain_request("tinycnn", x, {"gradcam": None, "ig": {"n_steps": 8}}, Targets()), timeout=60)
        local = Engine(tiny, ChunkSizes(8, 16)).explain(x, Targets(), {"gradcam": make_params("gradcam"), "ig": make_params("ig", n_steps=8)})
        got = by_key(response)
        for a in local.attributions:
            np.testing.assert_allclose(decode_map(got[method_params.method_enum(a.method), a.target].map), a.map.numpy(), rtol=1e-4, atol=1e-6)
        workers = [p.pid for p in psutil.Process(process.process.pid).children(recursive=True)]
    finally:
        service.stop()
    assert not process.alive() and not process.workdir.exists()
    assert not [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
