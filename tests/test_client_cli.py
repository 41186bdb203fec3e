"""The Python clients and the command line's remote half, over real gRPC.

The server here is a stand-in: a plain `grpc.server` whose servicer runs the in-process
Engine through `saliency.codec.convert`, so these tests pin the client, the CLI and the
conversion without depending on the production servicer (tested in its own files).
Also: `saliency serve` flag -> ServiceConfig building, without starting a server.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import sys
import threading
import types
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from PIL import Image

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.limits import Limits
from saliency.attribution.registry import get_method, make_params, methods_for
from saliency.attribution.types import Targets
from saliency.cli import build_parser, main
from saliency.cli_remote import serve_config
from saliency.client import (
    SERVICE_NAME,
    AsyncExplainerClient,
    AttributionEvent,
    ExplainerClient,
    ExplainResult,
    OutputOptions,
)
from saliency.codec import convert, method_params, tensors
from saliency.errors import SaliencyError
from saliency.imaging import ImageLimits
from saliency.models import get_spec, load_model
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc


class StandInServicer(pb_grpc.ExplainerServicer):
    """Explain with the in-process Engine on tinycnn; records what each call carried."""

    def __init__(self):
        self.metadata: list[dict[str, str]] = []
        self.requests: list[pb.ExplainRequest] = []
        self.stream_cancelled = threading.Event()
        self.hold_stream = False  # ExplainStream waits for the client to go away

    def _run(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        self.requests.append(request)
        try:
            spec = get_spec(request.model)
            x, rgb = tensors.input_from_request(request, spec, ImageLimits())
            targets = convert.targets_from_proto(
                request.targets if request.HasField("targets") else None, spec.num_classes, 16
            )
            methods = method_params.methods_from_proto(request.methods, Limits(), 16, tuple(x.shape))
            options = convert.output_options_from_proto(request.output if request.HasField("output") else None)
        except SaliencyError as exc:
            code = grpc.StatusCode.NOT_FOUND if exc.field == "model" else grpc.StatusCode.INVALID_ARGUMENT
            context.abort(code, str(exc))
        engine = Engine(load_model(request.model), ChunkSizes(grad=8, forward=8))
        result = engine.explain(x, targets, methods, n_predictions=options.top_predictions)
        response = pb.ExplainResponse(
            model=request.model,
            request_id=request.request_id or "generated",
            predictions=convert.predictions_to_proto(result.predictions),
            targets=result.targets,
        )
        fast, deep = [], []
        for a in result.attributions:
            info = get_method(a.method)
            message = convert.attribution_to_proto(a, options, rgb, info.signed, 0.5, 2.0)
            (fast if info.kind == "fast" else deep).append(message)
        return response, fast, deep

    def Explain(self, request, context):
        response, fast, deep = self._run(request, context)
        response.attributions.extend(fast + deep)
        return response

    def ExplainStream(self, request, context):
        response, fast, deep = self._run(request, context)
        response.attributions.extend(fast)
        context.add_callback(self.stream_cancelled.set)
        yield pb.ExplainEvent(prediction=response)
        if self.hold_stream:
            self.stream_cancelled.wait(10)
            return
        for message in deep:
            yield pb.ExplainEvent(attribution=message)

    def ListModels(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        return pb.ListModelsResponse(models=[convert.model_info_to_proto(get_spec("tinycnn"), Limits())])


def start_server(servicer, credentials=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ExplainerServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


@pytest.fixture(scope="module")
def stand_in():
    servicer = StandInServicer()
    server, port = start_server(servicer)
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture
def png(tmp_path) -> Path:
    rgb = np.random.default_rng(5).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


# ------------------------------------------------------------------------------- clients


def test_explain_returns_numpy_maps_and_sends_the_token(stand_in, png):
    servicer, address = stand_in
    with ExplainerClient(address, token="s3cret", timeout=30) as client:
        assert client.health() == "SERVING"
        result = client.explain(
            png.read_bytes(), "tinycnn",
            {"gradcam": None, "ig": {"n_steps": 4}, "vanilla": make_params("vanilla", reduction="l2")},
            Targets(top_k=2), OutputOptions(include_overlay=True, top_predictions=3), request_id="abc",
        )
    assert servicer.metadata[-1]["authorization"] == "Bearer s3cret"
    assert isinstance(result, ExplainResult)
    assert (result.model, result.request_id, len(result.predictions)) == ("tinycnn", "abc", 3)
    assert result.targets == tuple(p.class_index for p in result.predictions[:2])
    assert sorted((a.method, a.target) for a in result.attributions) == sorted(
        (m, t) for m in ("gradcam", "ig", "vanilla") for t in result.targets
    )
    for a in result.attributions:
        assert isinstance(a.map, np.ndarray) and a.map.dtype == np.float32 and a.map.shape == (32, 32)
        assert a.stats["queue_ms"] == 0.5 and a.stats["compute_ms"] == 2.0
        assert result.overlays[(a.method, a.target)].startswith(b"\x89PNG")
    ig = next(a for a in result.attributions if a.method == "ig")
    assert ig.stats["n_steps"] == 4
    # The request carried the parameters as given.
    sent = method_params.methods_from_proto(servicer.requests[-1].methods, Limits(), 16, (3, 32, 32))
    assert sent["vanilla"].reduction == "l2" and sent["ig"].n_steps == 4


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_explain_accepts_a_model_input_array(stand_in, kind):
    _, address = stand_in
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))
    with ExplainerClient(address) as client:
        sent = x.numpy() if kind == "numpy" else x
        result = client.explain(sent, "tinycnn", {"gradcam": None}, Targets(classes=(1, 4)))
    assert result.targets == (1, 4)
    expected = Engine(load_model("tinycnn")).explain(x, Targets(classes=(1, 4)), {"gradcam": make_params("gradcam")})
    for got, want in zip(result.attributions, expected.attributions, strict=True):
        np.testing.assert_array_equal(got.map, want.map.numpy())


def test_stream_yields_the_prediction_first_then_deep_maps(stand_in, png):
    _, address = stand_in
    with ExplainerClient(address) as client:
        events = list(client.explain_stream(png.read_bytes(), "tinycnn", {"ig": {"n_steps": 3}, "eigencam": None}))
    first, rest = events[0], events[1:]
    assert isinstance(first, ExplainResult) and [a.method for a in first.attributions] == ["eigencam"]
    assert [type(e) for e in rest] == [AttributionEvent] and rest[0].attribution.method == "ig"


def test_leaving_a_stream_early_cancels_the_call(stand_in, png):
    servicer, address = stand_in
    servicer.stream_cancelled.clear()
    servicer.hold_stream = True
    try:
        with ExplainerClient(address) as client:
            stream = client.explain_stream(png.read_bytes(), "tinycnn", {"rise": {"n_masks": 8}})
            assert isinstance(next(stream), ExplainResult)
            stream.close()
            assert servicer.stream_cancelled.wait(10)
    finally:
        servicer.hold_stream = False


def test_server_errors_surface_as_rpc_errors_with_the_field(stand_in, png):
    _, address = stand_in
    with ExplainerClient(address) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.explain(png.read_bytes(), "tinycnn", {"ig": {"n_steps": 5000}})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("methods[0].integrated_gradients.n_steps: ")


def test_list_models(stand_in):
    _, address = stand_in
    with ExplainerClient(address) as client:
        (model,) = client.list_models()
    supported = [name for name in method_params.METHOD_NAMES.values() if name in methods_for(get_spec("tinycnn"))]
    assert model.name == "tinycnn" and len(model.methods) == len(supported)


def test_async_client(stand_in, png):
    servicer, address = stand_in

    async def scenario():
        async with AsyncExplainerClient(address, token="t0k", timeout=30) as client:
            status = await client.health()
            models = await client.list_models()
            result = await client.explain(png.read_bytes(), "tinycnn", {"gradcam": None}, Targets(top_k=2))
            events = [e async for e in client.explain_stream(png.read_bytes(), "tinycnn", {"rise": {"n_masks": 8}})]
        return status, models, result, events

    status, models, result, events = asyncio.run(scenario())
    assert status == "SERVING" and models[0].name == "tinycnn"
    assert len(result.attributions) == 2 and servicer.metadata[-1]["authorization"] == "Bearer t0k"
    assert isinstance(events[0], ExplainResult) and isinstance(events[1], AttributionEvent)


def _self_signed(tmp_path: Path) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "saliency-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_with_a_ca_file(tmp_path, capsys):
    cert, key = _self_signed(tmp_path)
    server, port = start_server(StandInServicer(), grpc.ssl_server_credentials([(key, cert)]))
    try:
        with ExplainerClient(f"127.0.0.1:{port}", root_certificates=cert, timeout=10) as client:
            assert client.health() == "SERVING"
        ca = tmp_path / "ca.pem"
        ca.write_bytes(cert)
        assert main(["models", "--server", f"127.0.0.1:{port}", "--tls-ca", str(ca)]) == 0
        assert "tinycnn" in capsys.readouterr().out
        # Without the CA the handshake fails: UNAVAILABLE, exit 1 (may work later, not a usage error).
        assert main(["models", "--server", f"127.0.0.1:{port}", "--timeout", "5"]) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err
    finally:
        server.stop(0)


# -------------------------------------------------------------------------- CLI, remote


def test_remote_explain_writes_the_same_files_as_in_process(stand_in, png, tmp_path, capsys):
    _, address = stand_in
    common = ["explain", str(png), "--model", "tinycnn", "--methods", "gradcam,vanilla,ig",
              "--top-k", "2", "--raw", "--param", "ig.n_steps=4"]
    assert main([*common, "--out", str(tmp_path / "local"), "--chunk-size", "8"]) == 0
    assert main([*common, "--out", str(tmp_path / "remote"), "--server", address]) == 0
    stdout = capsys.readouterr().out
    local = sorted(p.name for p in (tmp_path / "local").iterdir())
    remote = sorted(p.name for p in (tmp_path / "remote").iterdir())
    assert remote == local and "grid.png" in remote and len(local) == 3 * 2 * 2 + 1
    for name in local:
        a, b = tmp_path / "local" / name, tmp_path / "remote" / name
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(a), np.load(b))
        else:
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), name
    assert "queue_ms=" in stdout  # remote stats include the server's timings


def test_remote_explain_of_a_sample_sends_png_bytes(stand_in, tmp_path):
    servicer, address = stand_in
    out = tmp_path / "out"
    assert main(["explain", "--sample", "coffee", "--model", "tinycnn", "--methods", "eigencam",
                 "--server", address, "--out", str(out)]) == 0
    assert servicer.requests[-1].image.startswith(b"\x89PNG")
    assert np.asarray(Image.open(next(out.glob("eigencam_*.png")))).shape == (400, 600, 3)


def test_token_from_the_environment_and_the_flag(stand_in, monkeypatch, capsys):
    servicer, address = stand_in
    monkeypatch.setenv("SALIENCY_TOKEN", "from-env")
    assert main(["models", "--server", address]) == 0
    assert servicer.metadata[-1]["authorization"] == "Bearer from-env"
    assert main(["models", "--server", address, "--token", "from-flag"]) == 0
    assert servicer.metadata[-1]["authorization"] == "Bearer from-flag"
    monkeypatch.delenv("SALIENCY_TOKEN")
    assert main(["models", "--server", address]) == 0
    assert "authorization" not in servicer.metadata[-1]
    capsys.readouterr()


def test_remote_models_lists_parameters_with_the_servers_limits(stand_in, capsys):
    _, address = stand_in
    assert main(["models", "--server", address]) == 0
    listing = capsys.readouterr().out
    assert f"models served by {address}:" in listing and "tinycnn" in listing
    assert "ig.n_steps = 50  (int, 1..1024)" in listing
    assert "ig.rule = gausslegendre  (enum: riemann_left |" in listing
    assert "rise.p = 0.5  (float, 0..1)" in listing
    assert "ig.custom_baseline = -  (tensor, API only)" in listing


@pytest.mark.parametrize(
    ("extra", "status", "needle"),
    [
        (["--model", "nope"], 2, "NOT_FOUND: model:"),
        (["--param", "ig.n_steps=5000"], 2, "INVALID_ARGUMENT: methods[0].integrated_gradients.n_steps:"),
        (["--chunk-size", "4"], 2, "chunk-size"),
        (["--alpha", "2"], 2, "alpha"),
        (["--param", "ig.n_steps=0"], 2, "ig.n_steps"),  # fixed bounds are checked before sending
        (["--tls-ca", "/nonexistent/ca.pem"], 2, "tls-ca"),
        (["--timeout", "0"], 2, "timeout"),
    ],
    ids=["unknown model", "over the server limit", "chunk size", "alpha", "n_steps 0", "ca file", "timeout"],
)
def test_remote_explain_errors_exit_with_one_line(stand_in, png, tmp_path, capsys, extra, status, needle):
    _, address = stand_in
    out = tmp_path / "out"
    argv = ["explain", str(png), "--methods", "ig", "--server", address, "--out", str(out), *extra]
    assert main(argv) == status
    stderr = capsys.readouterr().err
    assert needle in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def test_unreachable_server_exits_1(png, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["explain", str(png), "--server", f"127.0.0.1:{port}", "--timeout", "5", "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_server_flags_parse():
    args = build_parser().parse_args(
        ["explain", "x.png", "--server", "h:1", "--token", "t", "--tls-ca", "ca.pem", "--timeout", "2.5"]
    )
    assert (args.server, args.token, args.tls_ca, args.timeout) == ("h:1", "t", "ca.pem", 2.5)
    args = build_parser().parse_args(["models", "--server", "h:2"])
    assert args.server == "h:2" and args.token is None


def test_remote_only_flags_without_server_exit_2(png, tmp_path, capsys):
    assert main(["explain", str(png), "--token", "t", "--out", str(tmp_path / "o")]) == 2
    assert "server: --token only apply with --server" in capsys.readouterr().err
    assert main(["models", "--tls-ca", "ca.pem", "--timeout", "3"]) == 2
    assert "--tls-ca, --timeout only apply with --server" in capsys.readouterr().err


# ----------------------------------------------------------------------------- serve


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("SALIENCY_") and key != "SALIENCY_CACHE_DIR":
            monkeypatch.delenv(key)
    return monkeypatch


def test_serve_flags_build_the_config(clean_env):
    config = serve_config([
        "--host", "0.0.0.0", "--port", "0", "--metrics-port", "9999", "--models", "tinycnn,efficientnet_lite0",
        "--max-chunk", "16", "--max-batch-delay-ms", "2.5", "--max-ig-steps", "64", "--reflection", "false",
        "--auth-tokens-file", "/etc/tokens",
    ])
    assert (config.host, config.port, config.metrics_port) == ("0.0.0.0", 0, 9999)
    assert config.models == ("tinycnn", "efficientnet_lite0")
    assert (config.max_chunk, config.max_batch_delay_ms, config.reflection) == (16, 2.5, False)
    assert config.limits.max_ig_steps == 64 and config.limits.max_rise_masks == Limits().max_rise_masks
    assert config.auth_tokens_file == "/etc/tokens"
    defaults = serve_config([])
    assert defaults.host == "127.0.0.1" and defaults.port == 50051  # loopback unless told


def test_flags_override_env_which_overrides_the_file(clean_env, tmp_path):
    path = tmp_path / "saliency.yaml"
    path.write_text("port: 7000\nmetrics_port: 7001\nfast_workers: 3\nlimits:\n  max_targets: 4\n")
    clean_env.setenv("SALIENCY_METRICS_PORT", "7101")
    config = serve_config(["--config", str(path), "--port", "7200"])
    assert (config.port, config.metrics_port, config.fast_workers) == (7200, 7101, 3)
    assert config.limits.max_targets == 4


@pytest.fixture
def fake_server(monkeypatch):
    """`saliency.server` replaced: records the config run_server gets instead of serving."""
    calls = []
    module = types.ModuleType("saliency.server")
    module.run_server = lambda config: calls.append(config) or 0
    monkeypatch.setitem(sys.modules, "saliency.server", module)
    return calls


def test_serve_runs_the_server_with_the_config(clean_env, fake_server):
    assert main(["serve", "--port", "0", "--models", "tinycnn"]) == 0
    (config,) = fake_server
    assert config.port == 0 and config.models == ("tinycnn",)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "eighty"], "port"),
        (["--reflection", "maybe"], "reflection"),
        (["--max-ig-steps", "1.5"], "max_ig_steps"),
        (["--config", "/nonexistent/saliency.yaml"], "saliency.yaml"),
        (["--backend", "triton"], "backend"),
    ],
)
def test_serve_config_errors_exit_2_without_serving(clean_env, fake_server, capsys, argv, needle):
    assert main(["serve", *argv]) == 2
    stderr = capsys.readouterr().err
    assert needle in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert fake_server == []


def test_serve_rejects_unknown_config_keys(clean_env, fake_server, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("prot: 1\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert "prot" in capsys.readouterr().err and fake_server == []


def test_loadtest_is_a_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["loadtest", "--help"])
    assert info.value.code == 0
    assert "--users" in capsys.readouterr().out
