"""The command line's network half: `explain` / `models` against a running service (--server),
and `serve`, which starts one.

A remote `explain` sends the image file's bytes as they are (a bundled sample PNG-encoded),
asks for raw float32 maps, and renders overlays locally over the same decoded photograph, so
it writes exactly the files an in-process run writes. gRPC failures print one line with the
status code: exit 2 when the request must change (INVALID_ARGUMENT, NOT_FOUND,
UNAUTHENTICATED, PERMISSION_DENIED), 1 when it may succeed later (UNAVAILABLE, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saliency.attribution.limits import Limits
from saliency.cli_common import (
    USAGE_ERROR,
    fail,
    make_out_dir,
    parse_list,
    parse_methods,
    parse_params,
    parse_randomizations,
    parse_targets,
    read_image,
    report,
)
from saliency.errors import InvalidArgument, NotFound, require
from saliency.runtime.config import ServiceConfig, load_config
from saliency.wire.types import OutputOptions

TOKEN_ENV = "SALIENCY_TOKEN"
# The server checks n_steps & co. against its own limits; here only what travels (int32).
UNBOUNDED_LIMITS = Limits(*(2**31 - 1 for _ in dataclasses.fields(Limits)))
_CALLER_CODES = ("INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED")


# ------------------------------------------------------------------------- remote commands


def connect(args: argparse.Namespace) -> Any:
    """An ExplainerClient for --server, --token (or $SALIENCY_TOKEN), --tls-ca, --timeout."""
    from saliency.client import ExplainerClient

    token = args.token or os.environ.get(TOKEN_ENV) or None
    ca = None
    if args.tls_ca:
        try:
            ca = Path(args.tls_ca).read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read {args.tls_ca!r}: {exc.strerror}", "tls-ca") from None
    require(args.timeout is None or args.timeout > 0, "timeout", "must be positive")
    return ExplainerClient(args.server, token=token, root_certificates=ca, timeout=args.timeout)


def _rpc_failed(exc: Any, server: str) -> int:
    code = exc.code().name if exc.code() is not None else "UNKNOWN"
    details = " ".join((exc.details() or "").split())  # one line, whatever the server sent
    fail(f"saliency: {server}: {code}: {details}")
    return USAGE_ERROR if code in _CALLER_CODES else 1


def read_image_bytes(path: str | None, sample: str | None) -> tuple[str, np.ndarray, bytes]:
    """(display name, uint8 RGB [H, W, 3], encoded bytes to send) from a file or a sample."""
    from saliency import render
    from saliency.imaging import decode_image

    if sample is not None:
        name, rgb = read_image(None, sample)
        return name, rgb, render.encode_png(rgb)
    try:
        encoded = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path!r}: {exc.strerror}", "image") from None
    # Decoded here too: the overlays need the pixels, and a broken file fails before the call.
    return Path(path).name, decode_image(encoded), encoded


def _local_label(model: str, class_index: int) -> str:
    """The class name from the local zoo, or "" for a model this install does not know."""
    from saliency.models import get_spec

    try:
        return get_spec(model).labels[class_index]
    except (NotFound, IndexError):
        return ""


def explain(args: argparse.Namespace) -> int:
    """`saliency explain ... --server HOST:PORT`: the same output files as in-process."""
    import grpc

    methods = parse_methods(args.methods)
    params = parse_params(methods, args.param, UNBOUNDED_LIMITS)
    targets = parse_targets(args.top_k, args.targets)
    require(0.0 <= args.alpha <= 1.0, "alpha", f"{args.alpha} is outside [0, 1]")
    require(args.chunk_size is None, "chunk-size", "only for in-process runs; the server chunks")
    name, rgb, encoded = read_image_bytes(args.image, args.sample)
    with connect(args) as client:
        try:
            # Raw float32 maps, at the size asked for: the server resizes them (and caps them at
            # its max_overlay_side); the overlays are drawn here over the whole photograph.
            output = OutputOptions(map_size=args.map_size)
            result = client.explain(encoded, args.model, params, targets, output=output)
        except grpc.RpcError as exc:
            return _rpc_failed(exc, args.server)
    out = make_out_dir(args.out)  # only now: a rejected request leaves nothing behind
    labels = {p.class_index: p.label for p in result.predictions}
    return report(
        result.model, name, rgb, result.predictions, result.targets, result.attributions,
        methods, lambda c: labels.get(c) or _local_label(result.model, c), out, args.raw,
        args.alpha, result.region,
    )


def sanity(args: argparse.Namespace) -> int:
    """`saliency sanity ... --server HOST:PORT`: the SanityCheck RPC; prints the same table."""
    import grpc

    from saliency.reports.sanity_report import format_sanity_rows

    params = parse_params(parse_methods(args.methods), args.param, UNBOUNDED_LIMITS)
    layers = parse_list(args.layers, "layers")
    modes = parse_randomizations(args.randomizations)
    require(args.seed >= 0, "seed", "must be non-negative")
    name, _, encoded = read_image_bytes(args.image, args.sample)
    with connect(args) as client:
        try:
            result = client.sanity_check(encoded, args.model, params, layers, modes, args.target, args.seed)
        except grpc.RpcError as exc:
            return _rpc_failed(exc, args.server)
    label = _local_label(result.model, result.target)
    print(f"{result.model} on {name}: class {result.target} {label}; similarity of each map to the "
          f"original model's (1 = unchanged); served weights sha256 {result.weights_sha256[:16]}")
    print(format_sanity_rows(result.rows))
    return 0


def list_models(args: argparse.Namespace) -> int:
    """`saliency models --server HOST:PORT`: what the service serves, with parameter limits."""
    import grpc

    with connect(args) as client:
        try:
            models = client.list_models()
        except grpc.RpcError as exc:
            return _rpc_failed(exc, args.server)
    print_models(models, args.server)
    return 0


def _describe(p: Any) -> str:
    """A ParameterInfo -> "int, 1..1024" / "enum: max | sum | l2" / "tensor, API only"."""
    if p.type == "enum":
        return f"enum: {' | '.join(p.choices)}"
    if p.type == "tensor":
        return "tensor, API only"
    low = f"{p.minimum:g}" if p.HasField("minimum") else ""
    high = f"{p.maximum:g}" if p.HasField("maximum") else ""
    return f"{p.type}, {low}..{high}" if low or high else p.type


def print_models(models: Sequence[Any], where: str) -> None:
    print(f"models served by {where}:")
    for m in models:
        weights = "" if m.pretrained else " [RANDOM WEIGHTS]"
        crop = " centre crop" if m.resize == "crop" else ""
        print(f"  {m.name:<20} {m.height}x{m.width}{crop}, {m.num_classes} classes, "
              f"up to {m.max_targets} targets{weights}: {m.description}")
    # Print the methods once when every model supports the same ones, else per model.
    listings = {m.name: list(m.methods) for m in models}
    shared = len({tuple(x.SerializeToString(deterministic=True) for x in v) for v in listings.values()}) <= 1
    groups = [("methods", next(iter(listings.values()), []))] if shared else [
        (f"methods of {name}", methods) for name, methods in listings.items()
    ]
    for title, methods in groups:
        print(f"{title} (set parameters with --param METHOD.FIELD=VALUE):")
        for info in methods:
            print(f"  {info.name:<17} [{info.kind}] {info.summary}")
            for p in info.parameters:
                print(f"      {info.name}.{p.name} = {p.default_value or '-'}  ({_describe(p)})")


# ---------------------------------------------------------------------------------- serve

# Hand-written help for the flags people reach for; the rest say their default.
_SERVE_HELP = {
    "host": "address to bind; 0.0.0.0 exposes the service beyond this machine",
    "port": "gRPC port (0: pick a free one)",
    "metrics_port": "Prometheus /metrics port",
    "http_enabled": "serve the HTTP/JSON API and web page beside gRPC (docs/http.md)",
    "http_host": "address of the HTTP API (none: the gRPC --host)",
    "http_port": "HTTP/JSON API and web page port (0: pick a free one)",
    "models": "comma-separated models to load, e.g. efficientnet_lite0,tinycnn",
    "backend": "embedded (the engine in-process) or torchserve",
    "device": "torch device, e.g. cpu or cuda:0",
    "max_chunk": "samples per model call with gradient (0: measured per model)",
    "max_chunk_forward": "samples per forward-only model call (0: measured)",
    "max_batch_delay_ms": "how long deep work waits for more samples to fill a chunk",
    "auth_tokens_file": "file of bearer tokens, one per line (or $SALIENCY_AUTH_TOKENS)",
    "tls_cert_file": "PEM certificate chain: serve TLS (with --tls-key-file)",
    "tls_key_file": "PEM private key of the certificate",
    "tls_client_ca_file": "PEM CA: require client certificates (mutual TLS)",
    "otlp_endpoint": "OTLP/gRPC endpoint for traces (empty: no export)",
    "default_deadline_s": "seconds a call may take when the client sets no deadline",
    "grace_s": "seconds in-flight calls get to finish on SIGTERM",
    "reflection": "serve gRPC server reflection",
    "max_methods": "methods one request may ask for",
    "max_targets": "target classes one request may ask for",
    "quality_sample_rate": "fraction of requests scored for saliency_explanation_quality (0-1)",
    "log_format": "json (one object per line) or text, on stderr",
    "log_level": "debug, info (one access line per RPC), warning or error",
    "max_connection_age_s": "seconds before a client is asked to reconnect, spreading load over new replicas (0: never)",
    "max_connection_age_grace_s": "seconds calls in flight get after that request (0: unbounded)",
    "reload_interval_s": "seconds between checks of the TLS files and tokens file for changes (0: on SIGHUP only)",
}


def _serve_fields() -> list[tuple[str, Any]]:
    """(name, default) of every ServiceConfig field and every Limits field (flattened)."""
    base = ServiceConfig()
    fields = [(f.name, getattr(base, f.name)) for f in dataclasses.fields(ServiceConfig) if f.name != "limits"]
    return fields + [(f.name, getattr(base.limits, f.name)) for f in dataclasses.fields(Limits)]


def _metavar(default: Any) -> str:
    if isinstance(default, bool):
        return "BOOL"
    if isinstance(default, tuple):
        return "A,B"
    return {int: "N", float: "X"}.get(type(default), "S")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """--config plus one flag per ServiceConfig / Limits field (values coerced by load_config)."""
    parser.add_argument(
        "--config", metavar="FILE",
        help="YAML of config fields; precedence: flags > SALIENCY_<FIELD> env > file > defaults",
    )
    parser.add_argument(
        "--model-config", dest="model_configs", action="append", metavar="FILE",
        help="a YAML model config to serve (repeatable; docs/models.md); without --models, only these",
    )
    for name, default in _serve_fields():
        if name == "model_configs":
            continue  # --model-config above, one file per flag
        shown = ",".join(default) if isinstance(default, tuple) else default
        shown = "none" if shown == "" else shown
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, metavar=_metavar(default),
            help=f"{_SERVE_HELP.get(name, name.replace('_', ' '))} (default: {shown!s})".replace("%", "%%"),
        )


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    """The ServiceConfig `saliency serve` would run with. Raises ValueError / OSError."""
    overrides = {name: getattr(args, name) for name, _ in _serve_fields()}
    return load_config(args.config, overrides={k: v for k, v in overrides.items() if v is not None})


def serve_config(argv: Sequence[str]) -> ServiceConfig:
    """argv after `saliency serve` -> ServiceConfig, without starting anything (for tests)."""
    parser = argparse.ArgumentParser(prog="saliency serve")
    add_serve_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def serve(args: argparse.Namespace) -> int:
    """`saliency serve`: build the config, then run the server until SIGTERM / SIGINT."""
    import yaml

    from saliency.runtime.tracing import otlp_target

    try:
        config = config_from_args(args)
        otlp_target(config.otlp_endpoint)  # a bad tracing setting stops here, in one line
    except (ValueError, OSError, yaml.YAMLError) as exc:
        return fail(f"saliency serve: {' '.join(str(exc).split())}")
    from saliency.errors import SaliencyError
    from saliency.server import run_server

    try:
        return run_server(config)
    # A model config that does not fit its model, a tokens or TLS file that cannot serve: the
    # service refuses to start, in one line that names the setting.
    except (SaliencyError, ValueError, OSError) as exc:
        return fail(f"saliency serve: {' '.join(str(exc).split())}")
