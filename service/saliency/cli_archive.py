"""`saliency archive CONFIG.yaml --out DIR`: a TorchServe archive of a user's model config."""

from __future__ import annotations

import argparse
import sys

from saliency.errors import SaliencyError

USAGE_ERROR = 2


def add_archive_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_config", metavar="FILE", help="the YAML model config (docs/models.md)")
    parser.add_argument("--out", default="model_store", help="the model store to write <name>.mar to")
    parser.add_argument(
        "--torchserve-config", metavar="FILE",
        help="TorchServe's model-config.yaml for the archive (batching per registration, "
        "responseTimeout; as model_store/tinycnn/model-config.yaml); default: one worker each",
    )


def archive(args: argparse.Namespace) -> int:
    """Build the archive; print its path. Exit 2 naming the field for a bad config."""
    from saliency.torchserve.archive import ArchiveError, build_archive, torchserve_config

    try:
        path = build_archive(args.model_config, args.out, torchserve_config(args.torchserve_config))
    except (ArchiveError, SaliencyError, OSError) as exc:
        print(f"error: saliency archive: {' '.join(str(exc).split())}", file=sys.stderr)
        return USAGE_ERROR
    print(f"{path} (TorchServe registers it as <name> and <name>-deep: docs/torchserve.md)")
    return 0
