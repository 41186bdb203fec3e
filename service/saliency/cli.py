"""The `saliency` command line: explain one image and write the pictures; list; serve.

    saliency explain IMAGE|--sample NAME --model M --methods a,b [--top-k K|--targets 1,2]
                     --out DIR [--raw [--map-size input|original]] [--param METHOD.FIELD=VALUE ...]
                     [--server HOST:PORT [--token T] [--tls-ca FILE]]
    saliency explain IMAGE --model-config my.yaml --methods a,b ...   (a model described by a YAML config)
    saliency models [--server HOST:PORT ...]
    saliency models inspect my.yaml      (load, probe, and say which methods can explain it)
    saliency sanity IMAGE|--sample NAME --model M [--methods a,b] [--layers l1,l2]
                    [--randomizations cascading,independent] [--server HOST:PORT ...]
    saliency report sanity --model M --images N --out DIR
    saliency report roar [--quick] [--models M,..] [--methods a,b] [--fractions 0,10,..] [--seeds N] --out DIR
    saliency archive my.yaml --out model_store/                        (a TorchServe archive of a model config)
    saliency serve [--config FILE] [--host H] [--port P] [--models a,b] [...]

Thin on purpose: parse, validate, call the Engine (or a server, see `cli_remote`), hand maps
to `saliency.render`, write files. In-process and remote runs write the same files.
User errors print one line naming the field at fault and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence
from typing import Any

from saliency import render
from saliency.cli_common import (
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
from saliency.errors import SaliencyError, require
from saliency.wire.types import InputRegion

if typing.TYPE_CHECKING:
    from saliency.attribution.types import Attribution

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")  # skimage.data photographs
# --map-size original: maps at the image's size, capped as the service caps them (its default
# max_overlay_side), so that in-process and remote runs write the same files.
MAX_MAP_SIDE = 2048


class _UsageError(Exception):
    """argparse's complaint, raised instead of argparse's own print-usage-and-exit."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise _UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="saliency", description="Explain image-model predictions.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    explain = commands.add_parser("explain", help="explain one image and write overlay PNGs")
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("image", nargs="?", metavar="IMAGE", help="PNG, JPEG or WebP file")
    source.add_argument("--sample", choices=SAMPLES, help="a bundled skimage.data photograph")
    explain.add_argument("--model", default="efficientnet_lite0", help="see `saliency models`")
    explain.add_argument(
        "--model-config", metavar="FILE",
        help="a model described by a YAML model config (docs/models.md), instead of --model",
    )
    explain.add_argument(
        "--methods", default="gradcam", help="comma-separated method names (default: gradcam)"
    )
    which = explain.add_mutually_exclusive_group()
    which.add_argument("--top-k", type=int, help="explain the K best classes (default: 1)")
    which.add_argument("--targets", help="comma-separated class indices to explain")
    explain.add_argument("--out", default="out", help="output directory (default: out)")
    explain.add_argument("--raw", action="store_true", help="also write each map as float32 .npy")
    explain.add_argument(
        "--map-size", choices=("input", "original"), default="input",
        help="size of the .npy maps: the model's input (default) or the image's, at most "
        f"{MAX_MAP_SIDE} on the longer side, NaN where a crop model did not look (overlays are "
        "always drawn at the image's size)",
    )
    explain.add_argument(
        "--param", action="append", default=[], metavar="METHOD.FIELD=VALUE",
        help="a method parameter, e.g. ig.n_steps=32 (repeatable)",
    )
    explain.add_argument(
        "--alpha", type=float, default=0.6, help="overlay opacity at the hottest pixel (0-1)"
    )
    explain.add_argument(
        "--chunk-size", type=int,
        help="samples per model call for deep methods (default: measured once and cached)",
    )
    _add_server_arguments(explain)

    models = commands.add_parser("models", help="list models, methods and method parameters")
    _add_server_arguments(models)
    actions = models.add_subparsers(dest="models_command", parser_class=_Parser)
    inspect = actions.add_parser(
        "inspect", help="load a model config, probe the model and say which methods can explain it"
    )
    inspect.add_argument("model_config", metavar="FILE", help="the YAML model config")
    inspect.add_argument(
        "--no-chunk-sizes", action="store_true", help="skip measuring the deep methods' chunk sizes"
    )

    archive = commands.add_parser("archive", help="build a TorchServe archive (.mar) of a model config")
    from saliency.cli_archive import add_archive_arguments

    add_archive_arguments(archive)

    serve = commands.add_parser("serve", help="run the gRPC service (blocks until SIGTERM/SIGINT)")
    from saliency.cli_remote import add_serve_arguments

    add_serve_arguments(serve)

    sanity = commands.add_parser(
        "sanity", help="model-randomisation sanity check of one image (Adebayo et al. 2018)"
    )
    source = sanity.add_mutually_exclusive_group(required=True)
    source.add_argument("image", nargs="?", metavar="IMAGE", help="PNG, JPEG or WebP file")
    source.add_argument("--sample", choices=SAMPLES, help="a bundled skimage.data photograph")
    sanity.add_argument("--model", default="efficientnet_lite0", help="see `saliency models`")
    sanity.add_argument(
        "--methods", default="vanilla,gradcam,guided_backprop", help="comma-separated method names"
    )
    sanity.add_argument("--layers", help="comma-separated module paths, e.g. _fc,_blocks.7 "
                        "(default: the model's checkpoints)")
    sanity.add_argument("--randomizations", default="cascading,independent",
                        help="cascading and/or independent (default: both)")
    sanity.add_argument("--target", type=int, help="class to explain (default: the predicted one)")
    sanity.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    sanity.add_argument("--param", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                        help="a method parameter, e.g. ig.n_steps=16 (repeatable)")
    _add_server_arguments(sanity)

    report = commands.add_parser("report", help="generate a report: `saliency report sanity`")
    reports = report.add_subparsers(dest="report", required=True, parser_class=_Parser)
    sanity_report = reports.add_parser(
        "sanity", help="sanity checks of a model: Markdown pass/fail table and plots"
    )
    sanity_report.add_argument("--model", default="efficientnet_lite0", help="see `saliency models`")
    sanity_report.add_argument("--images", type=int, default=4, help="bundled photographs to use, 1-4")
    sanity_report.add_argument("--out", default="docs/sanity", help="output directory")
    sanity_report.add_argument("--layers", help="comma-separated module paths (default: checkpoints)")
    sanity_report.add_argument("--epochs", type=int, default=100,
                               help="data randomisation: tinycnn training epochs on digits")
    sanity_report.add_argument("--seed", type=int, default=0)
    roar_report = reports.add_parser(
        "roar", help="ROAR / KAR on scikit-learn's digits and the trained ViT's checks (docs/roar)"
    )
    from saliency.reports.roar_cli import add_arguments as add_roar_arguments

    add_roar_arguments(roar_report)

    # Listed for --help only: main() hands everything after the word to saliency/loadtest.py.
    commands.add_parser("loadtest", help="load-test a running service with locust (see --help)")
    return parser


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    remote = parser.add_argument_group("remote (ask a running `saliency serve` instead)")
    remote.add_argument("--server", metavar="HOST:PORT", help="the gRPC address of the service")
    remote.add_argument(
        "--token", help="bearer token (default: $SALIENCY_TOKEN); prefer the variable, "
        "command lines are visible to other users",
    )
    remote.add_argument("--tls-ca", metavar="FILE", help="PEM CA certificate: connect with TLS")
    remote.add_argument("--timeout", type=float, metavar="SECONDS", help="deadline of the call")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 for a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loadtest"]:
        from saliency.loadtest import main as loadtest_main

        return loadtest_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        if args.command == "serve":
            from saliency.cli_remote import serve

            return serve(args)
        if args.command == "archive":
            from saliency.cli_archive import archive

            return archive(args)
        if getattr(args, "models_command", None) == "inspect":
            require(not args.server, "server", "inspect loads the model here; it does not ask a server")
            from saliency.cli_inspect import inspect

            return inspect(args.model_config, measure_chunks=not args.no_chunk_sizes)
        if getattr(args, "model_config", None):
            # The server names its own models; a config given here would be ignored there.
            require(not args.server, "model-config", "a model config is loaded here; with --server use --model")
            from saliency.models import register_model_config

            args.model = register_model_config(args.model_config).name
        remote_only = [f"--{k.replace('_', '-')}" for k in ("token", "tls_ca", "timeout") if getattr(args, k, None)]
        # Ignoring them would run locally while the user believes they talk to a server.
        require(not remote_only or bool(args.server), "server", f"{', '.join(remote_only)} only apply with --server")
        if getattr(args, "server", None):
            from saliency import cli_remote

            remote = {"models": cli_remote.list_models, "sanity": cli_remote.sanity}
            return remote.get(args.command, cli_remote.explain)(args)
        if args.command == "models":
            return list_models()
        if args.command == "sanity":
            return sanity(args)
        if args.command == "report" and args.report == "roar":
            from saliency.reports.roar_cli import main as report_roar

            return report_roar(args)
        if args.command == "report":
            return report_sanity(args)
        return explain(args)
    except _UsageError as exc:
        return fail(str(exc))
    except SaliencyError as exc:  # its message already starts with the field
        return fail(f"saliency: {exc}")


# ----------------------------------------------------------------------------- commands


def explain(args: argparse.Namespace) -> int:
    from saliency.attribution.engine import Engine
    from saliency.attribution.executor import ChunkSizes
    from saliency.attribution.registry import all_methods, check_supported
    from saliency.imaging import to_model_input
    from saliency.models import get_spec, load_model
    from saliency.models.preprocess import input_region

    # Everything a user can get wrong is checked before the model loads or any work starts.
    spec = get_spec(args.model)
    methods = parse_methods(args.methods)
    check_supported(methods, spec)
    params = parse_params(methods, args.param)
    targets = parse_targets(args.top_k, args.targets)
    targets.validate(spec.num_classes)
    require(0.0 <= args.alpha <= 1.0, "alpha", f"{args.alpha} is outside [0, 1]")
    require(args.chunk_size is None or args.chunk_size >= 1, "chunk-size", "must be at least 1")
    name, rgb = read_image(args.image, args.sample)
    x = to_model_input(rgb, spec)
    region = input_region(spec.resize, spec.input_size, rgb.shape[:2])
    out = make_out_dir(args.out)

    deep = [m for m in methods if all_methods()[m].kind == "deep"]
    if args.chunk_size is not None:
        chunk_sizes = ChunkSizes(grad=args.chunk_size, forward=args.chunk_size)
    elif not deep:
        chunk_sizes = ChunkSizes(grad=1, forward=1)  # never used: skip the timing run
    else:
        chunk_sizes = None  # the Engine measures (first run per machine) and caches
    engine = Engine(load_model(args.model), chunk_sizes)
    with _ProgressBar(enabled=bool(deep)) as progress:
        result = engine.explain(x, targets, params, progress=progress)
    attributions = result.attributions
    if args.map_size == "original":
        attributions = [at_original_size(a, rgb.shape[:2], region) for a in attributions]
    return report(
        spec.name, name, rgb, result.predictions, result.targets, attributions,
        methods, spec.labels.__getitem__, out, args.raw, args.alpha, region,
    )


def at_original_size(a: Attribution, image_size: tuple[int, int], region: InputRegion) -> Attribution:
    """A map at the input size -> at the image's size (capped at MAX_MAP_SIDE), NaN outside
    `region`: what the service returns for map_size original (codec/convert.py, MapFrame)."""
    import torch

    size = render.fitted_size(image_size, MAX_MAP_SIDE)
    placed = render.place_map(a.map, size, region.pixel_box(image_size, size))
    return dataclasses.replace(a, map=torch.from_numpy(placed))


class _ProgressBar:
    """A tqdm bar on stderr fed by Engine.explain's progress(done, total) callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> _ProgressBar | None:
        if not self.enabled:
            return None
        from tqdm import tqdm

        self.bar = tqdm(desc="deep methods", unit="sample", file=sys.stderr, dynamic_ncols=True)
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()


def sanity(args: argparse.Namespace) -> int:
    """`saliency sanity`: cascading / independent randomisation of one image, in-process."""
    from saliency.attribution.registry import check_supported
    from saliency.attribution.tuning import chunk_sizes_for
    from saliency.imaging import to_model_input
    from saliency.models import get_spec, load_model
    from saliency.quality.sanity import model_randomisation
    from saliency.reports.sanity_report import format_sanity_rows

    spec = get_spec(args.model)
    methods = parse_methods(args.methods)
    check_supported(methods, spec)
    params = parse_params(methods, args.param)
    layers = parse_list(args.layers, "layers") or None
    modes = parse_randomizations(args.randomizations)
    require(args.target is None or 0 <= args.target < spec.num_classes, "target",
            f"{args.target} is outside [0, {spec.num_classes})")
    require(args.seed >= 0, "seed", "must be non-negative")
    name, rgb = read_image(args.image, args.sample)
    model = load_model(args.model)
    result = model_randomisation(
        model, [to_model_input(rgb, spec)], params, layers, modes,
        None if args.target is None else [args.target], args.seed, chunk_sizes_for(model),
        progress=lambda done, total, what: print(f"[{done}/{total}] {what}", file=sys.stderr, flush=True),
    )
    target = result.targets[0]
    print(f"{spec.name} on {name}: class {target} {spec.labels[target]}; similarity of each map to the "
          "original model's (1 = unchanged)")
    print(format_sanity_rows(result.rows()))
    return 0


def report_sanity(args: argparse.Namespace) -> int:
    """`saliency report sanity`: every sanity check, written as Markdown and PNGs to --out."""
    from saliency.models import get_spec
    from saliency.reports.sanity_report import SAMPLES as REPORT_SAMPLES
    from saliency.reports.sanity_report import run_report, summary_rows, write_report

    get_spec(args.model)
    require(1 <= args.images <= len(REPORT_SAMPLES), "images", f"{args.images} is outside [1, {len(REPORT_SAMPLES)}]")
    require(args.epochs >= 1, "epochs", "must be at least 1")
    require(args.seed >= 0, "seed", "must be non-negative")
    layers = parse_list(args.layers, "layers") or None
    out = make_out_dir(args.out)
    result = run_report(
        args.model, args.images, layers, args.epochs, seed=args.seed,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    for row in summary_rows(result):
        print("  " + " | ".join(row))
    written = write_report(result, out)
    print(f"wrote {len(written)} files to {out}: {', '.join(p.name for p in written)}")
    return 0


def list_models() -> int:
    from saliency.attribution.registry import all_methods, field_types
    from saliency.codec.method_params import METHOD_NAMES
    from saliency.models import model_specs

    print("models:")
    for spec in model_specs().values():
        h, w = spec.input_size
        weights = "" if spec.pretrained else " [RANDOM WEIGHTS]"
        crop = " centre crop" if spec.resize == "crop" else ""
        print(f"  {spec.name:<20} {h}x{w}{crop}, {spec.num_classes} classes, CAM layer "
              f"{spec.target_layer or 'none'}{weights}: {spec.description}")
    print("methods (set parameters with --param METHOD.FIELD=VALUE):")
    api_order = {name: i for i, name in enumerate(METHOD_NAMES.values())}  # as ListModels lists them
    for info in sorted(all_methods().values(), key=lambda m: api_order.get(m.name, len(api_order))):
        sign = ", signed" if info.signed else ""
        only = [s.name for s in model_specs().values() if info.unsupported_reason(s) is None]
        scope = "" if len(only) == len(model_specs()) else f" (models: {', '.join(only) or 'none'})"
        print(f"  {info.name:<17} [{info.kind}{sign}] {info.summary}{scope}")
        types = field_types(info.params_type)
        for f in dataclasses.fields(info.params_type):
            kind = types.get(f.name)
            settable = kind in (int, float, bool, str)
            type_name = kind.__name__ if settable else "tensor, API only"
            print(f"      {info.name}.{f.name} = {f.default!r}  ({type_name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
