"""A model store for a TorchServe that runs beside the service (the chart's sidecar), holding
user models: `python -m saliency.torchserve.store --model-config A.yaml ... --out DIR`.

It copies the built-in archives that `--models` names from the image's store, builds an
archive of each model config (`archive`), and writes `DIR/config.properties`: the
base config with this store, its `allowed_urls` and metrics declarations, the hardening
settings enforced (as when the service starts TorchServe itself), and the user models'
registrations (`<m>`, `<m>-deep`) added to `models=` and `load_models=` with the batching their
archives carry. The sidecar then starts TorchServe on that store and config. Exit status 2 with
the message naming the field for a bad model config; nothing is started half-configured.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from saliency.errors import SaliencyError
from saliency.torchserve.archive import ArchiveError, prepare_model_store
from saliency.torchserve.batch import DEEP_SUFFIX
from saliency.torchserve.process import (
    models_property,
    read_properties,
    store_settings,
    write_properties,
)


def store_properties(base: dict[str, str], store: Path, user_models: Sequence[str]) -> dict[str, str]:
    """`base` (the sidecar's config.properties) serving from `store`, with `user_models` added."""
    settings = store_settings(base, store)
    models = json.loads(settings.get("models") or "{}")
    models.update(models_property(store, user_models))
    settings["models"] = json.dumps(models, separators=(",", ":"))
    loads = [entry for entry in settings.get("load_models", "").split(",") if entry]
    loads += [f"{m}{suffix}={m}.mar" for m in user_models for suffix in ("", DEEP_SUFFIX)]
    settings["load_models"] = ",".join(loads)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saliency.torchserve.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-config", action="append", required=True, metavar="FILE", help="a model config (repeatable)")
    parser.add_argument("--models", default="", help="built-in models to serve too, comma-separated")
    parser.add_argument("--base-store", required=True, help="the store holding the built-in archives")
    parser.add_argument("--properties", required=True, help="the base config.properties")
    parser.add_argument("--out", required=True, help="the store to fill (an empty, writable directory)")
    args = parser.parse_args(argv)
    store = Path(args.out).resolve()
    builtin = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        user = prepare_model_store(args.base_store, builtin, args.model_config, store)
        settings = store_properties(read_properties(Path(args.properties)), store, user)
    except (ArchiveError, SaliencyError, OSError) as exc:
        print(f"error: torchserve store: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    write_properties(store / "config.properties", settings, f"Rendered by saliency from {args.properties}.")
    print(" ".join(f"{m}{suffix}={m}.mar" for m in builtin + user for suffix in ("", DEEP_SUFFIX)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
