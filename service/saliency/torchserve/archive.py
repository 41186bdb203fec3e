"""TorchServe archives (.mar) of model configs: `saliency archive`, and the model store a
started TorchServe serves user models from.

An archive of a model config holds:
- the handler (`handler.py`, this package's own file);
- TorchServe's `model-config.yaml`: the registrations' batching and `saliency.model_config`,
  the path of the user's config inside the archive;
- `saliency_model/model.yaml`, the user's config with its paths pointing at copies of what it
  names (model file, exported or TorchScript program, weights) beside it, and its labels
  written in as a list.

A `factory` source is not copied: its module must be importable where TorchServe runs (as it
is for the built-in models, whose factories live in this package).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from saliency.models.config import ModelConfig, read_model_config
from saliency.torchserve import handler
from saliency.torchserve.batch import HandlerSettings

ARCHIVE_DIR = "saliency_model"  # inside the archive: the model config and its files
ARCHIVED_CONFIG = f"{ARCHIVE_DIR}/model.yaml"
VERSION = "1.0"
# TorchServe's side of a user model's archive, unless the caller gives its own: one worker per
# registration, the fast pass batching briefly, the deep methods longer (their chunks share).
DEFAULT_TORCHSERVE_CONFIG: dict[str, Any] = {
    "responseTimeout": 300,
    "saliency": {
        "registrations": {
            "fast": {"batchSize": 8, "maxBatchDelay": 5, "minWorkers": 1, "maxWorkers": 1},
            "deep": {"batchSize": 16, "maxBatchDelay": 50, "minWorkers": 1, "maxWorkers": 1},
        },
    },
}
ARCHIVER_TIMEOUT_S = 600.0


class ArchiveError(ValueError):
    """An archive cannot be built; the message says why and what to do."""


def torchserve_config(path: str | Path | None) -> dict[str, Any]:
    """TorchServe's model-config.yaml for an archive: the file at `path` (the same shape as
    model_store/<model>/model-config.yaml, without `saliency.model`), or the default."""
    if path is None:
        return copy.deepcopy(DEFAULT_TORCHSERVE_CONFIG)
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ArchiveError(f"torchserve-config {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ArchiveError(f"torchserve-config {path}: must hold a mapping")
    section = data.get("saliency") or {}
    if not isinstance(section, dict):
        raise ArchiveError(f"torchserve-config {path}: saliency must be a mapping")
    for key in ("model", "model_config"):
        if key in section:
            raise ArchiveError(f"torchserve-config {path}: saliency.{key} is set by `saliency archive`")
    try:
        HandlerSettings.from_model_config(data, default_model="check")
    except (TypeError, ValueError) as exc:
        raise ArchiveError(f"torchserve-config {path}: {exc}") from None
    return data


def build_archive(
    config_path: str | Path, out_dir: str | Path, settings: Mapping[str, Any] | None = None
) -> Path:
    """Build `<name>.mar` of the model config at `config_path` in `out_dir`; return its path.

    Raises ModelConfigError for a bad config (naming the YAML field) and ArchiveError when the
    archiver is missing or fails."""
    config = read_model_config(config_path)
    ts_config = copy.deepcopy(dict(settings) if settings is not None else DEFAULT_TORCHSERVE_CONFIG)
    ts_config.setdefault("saliency", {})
    ts_config["saliency"] = {**ts_config["saliency"], "model": config.name, "model_config": ARCHIVED_CONFIG}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    if not archiver.exists():
        raise ArchiveError(f"{archiver} is missing: pip install 'saliency[torchserve]'")
    with tempfile.TemporaryDirectory(prefix="saliency-archive-") as tmp:
        # The archiver copies the contents of an --extra-files directory to the archive's root.
        extra = Path(tmp) / "extra"
        _stage_model(config, extra / ARCHIVE_DIR)
        ts_config_path = Path(tmp) / "model-config.yaml"
        ts_config_path.write_text(yaml.safe_dump(ts_config, sort_keys=False))
        command = [
            str(archiver), "--model-name", config.name, "--version", VERSION,
            "--handler", handler.__file__, "--config-file", str(ts_config_path),
            "--extra-files", str(extra), "--export-path", str(out), "--force",
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=ARCHIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ArchiveError(f"torch-model-archiver did not finish in {ARCHIVER_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            raise ArchiveError(f"torch-model-archiver failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    return out / f"{config.name}.mar"


def _stage_model(config: ModelConfig, directory: Path) -> None:
    """Write the config and copies of its files into `directory`, the config's paths rewritten
    to the copies (relative, so the archive can be unpacked anywhere)."""
    directory.mkdir(parents=True)
    data = yaml.safe_load(config.path.read_text())
    if config.source != "factory":
        source = Path(config.location)
        shutil.copy2(source, directory / source.name)
        data["model"][config.source] = source.name
    if config.weights is not None:
        name = config.weights.name
        if (directory / name).exists():  # a model file and its weights with one name
            name = f"weights-{name}"
        shutil.copy2(config.weights, directory / name)
        data["weights"] = name
    if config.labels is not None:
        data["labels"] = list(config.labels)
    (directory / "model.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def prepare_model_store(
    base_store: str | Path, builtin: Sequence[str], model_configs: Sequence[str | Path], store: Path
) -> list[str]:
    """Fill `store` with the archives of `builtin` models (copied from `base_store`, with its
    metrics.yaml) and a fresh archive of each model config; return the user models' names."""
    store.mkdir(parents=True, exist_ok=True)
    base = Path(base_store)
    for name in builtin:
        source = base / f"{name}.mar"
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: build the model archives with `make models`")
        shutil.copy2(source, store / source.name)
    if (base / "metrics.yaml").is_file():  # the handler's metrics, declared
        shutil.copy2(base / "metrics.yaml", store / "metrics.yaml")
    return [build_archive(path, store).name.removesuffix(".mar") for path in model_configs]
