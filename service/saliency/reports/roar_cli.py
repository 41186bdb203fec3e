"""`saliency report roar`: its flags, their validation, and the run (imports no torch until it
runs, so the command line stays light)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

MODEL_NAMES = ("tinycnn", "tinyvit_digits")  # roar.MODELS, without importing torch


def add_arguments(parser: Any) -> None:
    parser.add_argument("--out", default="docs/roar", help="output directory (default docs/roar)")
    parser.add_argument("--quick", action="store_true",
                        help="a few methods, k in {0, 50, 90}, one seed, no trained-ViT checks (tests)")
    parser.add_argument("--models", help=f"comma-separated, from {', '.join(MODEL_NAMES)} (default: both)")
    parser.add_argument("--methods", help="comma-separated ROAR methods (with a single --models only)")
    parser.add_argument("--fractions", help="comma-separated percentages, 0 included (default 0,10,30,50,70,90)")
    parser.add_argument("--seeds", type=int, help="retrainings per method and fraction (default 3, quick 1)")
    parser.add_argument("--kar", help="models that also get KAR, comma-separated, or 'none' (default: none; quick: tinycnn)")
    parser.add_argument("--no-vit-checks", action="store_true",
                        help="skip the trained ViT's sanity checks and attention-vs-gradient agreement")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random control and tie-breaking")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--from-json", metavar="FILE",
                        help="write report.md and roar.png again from a previous run's roar.json (no training)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the models are tiny, and the machine is shared)")


def options_from(args: Any) -> Any:
    """Validated RoarOptions from the parsed flags; errors name the flag."""
    from dataclasses import replace

    from saliency.errors import require
    from saliency.quality.roar import MAX_SEEDS, check_methods, parse_fractions
    from saliency.reports.roar_report import RoarOptions, check_models, quick_options

    def items(text: str, field_name: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(","))
        require(all(values), field_name, f"{text!r} has an empty item")
        return values

    options = quick_options() if args.quick else RoarOptions()
    if args.models is not None:
        models = items(args.models, "models")
        check_models(models)
        options = replace(options, models=models, kar=tuple(m for m in options.kar if m in models))
    if args.methods is not None:
        require(len(options.models) == 1, "methods", "give --methods with a single --models")
        methods = items(args.methods, "methods")
        check_methods(options.models[0], methods)
        options = replace(options, methods={**options.methods, options.models[0]: methods})
    if args.fractions is not None:
        options = replace(options, fractions=parse_fractions(args.fractions))
    if args.seeds is not None:
        require(1 <= args.seeds <= MAX_SEEDS, "seeds", f"{args.seeds} is outside [1, {MAX_SEEDS}]")
        options = replace(options, seeds=args.seeds)
    if args.kar is not None:
        kar = () if args.kar.strip() == "none" else items(args.kar, "kar")
        for i, m in enumerate(kar):
            require(m in options.models, f"kar[{i}]", f"{m!r} is not among the models run ({', '.join(options.models)})")
        options = replace(options, kar=kar)
    require(0 <= args.seed < 2**63, "seed", "must be in [0, 2^63)")
    return replace(options, seed=args.seed, trained_vit=options.trained_vit and not args.no_vit_checks
                   and "tinyvit_digits" in options.models)


def main(args: Any) -> int:
    """`saliency report roar`: run, print the summary, write the files."""
    from saliency.errors import InvalidArgument, require
    from saliency.quality.roar import seed_claims
    from saliency.reports.roar_report import run_report, write_report
    from saliency.reports.sanity_report import torch_threads

    options = options_from(args)
    require(1 <= args.threads <= 256, "threads", f"{args.threads} is outside [1, 256]")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"cannot create {str(out)!r}: {exc.strerror}", "out") from None
    if args.from_json is not None:
        return rewrite(Path(args.from_json), out)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    def partial(report: Any) -> None:
        write_report(report, out)

    with torch_threads(args.threads):
        if args.no_progress:
            report = run_report(options, None, say, partial)
        else:
            from tqdm import tqdm

            with tqdm(unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
                report = run_report(options, bar, say, partial)
    for result in report.results:
        for claim in seed_claims(result):
            print(f"{result.model}: {claim.text}: {'agrees' if claim.agrees else 'disagrees'} "
                  f"({claim.comparison.difference:+.3f} ± {claim.comparison.stderr:.3f} vs random)")
    written = write_report(report, out)
    print(f"wrote {len(written)} files to {out} in {report.seconds['total']:.0f} s: "
          f"{', '.join(p.name for p in written)}")
    return 0


def rewrite(source: Path, out: Path) -> int:
    """report.md and roar.png written again from `source` (a roar.json) into `out`."""
    import json

    from saliency.errors import InvalidArgument
    from saliency.reports.roar_report import load_report, write_report

    try:
        report = load_report(source)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {str(source)!r}: {exc.strerror}", "from-json") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"{str(source)!r} is not a roar.json of this version: {exc!r}", "from-json") from None
    written = write_report(report, out)
    print(f"wrote {len(written)} files to {out} from {source}: {', '.join(p.name for p in written)}")
    return 0
