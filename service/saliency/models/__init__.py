"""Models by name: a spec per model (input size, normalisation, CAM layer, labels) and a loader.

Every model, built-in or the user's, is described by a YAML model config (`models/config.py`;
the built-in ones ship in `models/zoo/`). `load_model` builds it (`build.py`), probes it once
(`probe.py`: CAM layer, head, attention, the calls its forward makes, which decide what each
method can explain), and serves an optimised copy when a parity check allows (`optimize.py`).
Loaded models are cached per process and device and never mutated afterwards.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from saliency.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from saliency.models.config import ModelConfig
    from saliency.models.probe import ModelProfile

ZOO_DIR = Path(__file__).parent / "zoo"
ZOO = ("efficientnet_lite0", "tinycnn", "vit_ti16", "tinyvit", "tinyvit_digits")  # in the order they are listed


@dataclass(frozen=True)
class ModelSpec:
    """What the engine and the API need to know about a model."""

    name: str
    input_size: tuple[int, int]  # (H, W) the image is resized to
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    target_layer: str  # dotted module path of the CAM layer (a spatial activation); "" for none
    labels: tuple[str, ...]
    description: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    # Dotted path of the final nn.Linear when the head is global average pooling of
    # `target_layer` followed by that one Linear (what CAM needs); "" when it is not.
    classifier_layer: str = ""
    # "vit" when the probe found attention, else "cnn": a description for ListModels; what a
    # method can explain is decided by the probe's profile, not by this label.
    architecture: str = "cnn"
    # False for models with seeded random weights (test models); ListModels says so.
    pretrained: bool = True
    # Vision transformers: dotted paths of the modules whose output is each block's attention
    # probabilities [B, heads, N, N] (CLS token first, then the patch grid row by row), first
    # block first. What attention_rollout / raw_attention capture; () for other models.
    attention_layers: tuple[str, ...] = ()
    # Fused attention calls (F.scaled_dot_product_attention, nn.MultiheadAttention) per forward,
    # whose probabilities are recomputed from their queries and keys; 0 for none.
    fused_attention: int = 0
    # Tokens before the patch grid in the attention matrices (the CLS token first, then
    # register / distillation tokens).
    prefix_tokens: int = 1
    # (prefix, h, w) when the CAM layer's output is tokens [B, prefix + h * w, C], read as a grid.
    cam_tokens: tuple[int, int, int] | None = None
    # What the probe found at load (None until the model is loaded; `profile_of` probes then).
    profile: ModelProfile | None = field(default=None, compare=False, repr=False)
    # The model config it was read from (None for specs written in code, e.g. tests').
    config: ModelConfig | None = field(default=None, compare=False, repr=False)
    # How an image becomes the input (models/preprocess.py): "stretch" (the whole image) or
    # "crop" (scaled, then the centre cut out; maps cover only that centre).
    resize: str = "stretch"

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """[.., 3, H, W] pixels in [0, 1] -> the model's input space."""
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device)
        return (pixels - mean[:, None, None]) / std[:, None, None]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """[.., 3, H, W] model input -> pixels in [0, 1] (clipped: an input need not come from an image)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        return (x * std[:, None, None] + mean[:, None, None]).clamp(0, 1)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve: its spec, the module (eval mode) and its device."""

    spec: ModelSpec
    module: nn.Module
    device: torch.device

    @functools.cached_property
    def weights_digest(self) -> str:
        """SHA-256 of the served module's weights, taken once (the served copy never changes):
        what keys the measured chunk sizes and the cached explanations."""
        from saliency.models.weights import weights_hash

        return weights_hash(self.module)


_lock = threading.RLock()
_configs: dict[str, ModelConfig] = {}  # by model name: the zoo, then registered user configs
_loaded: dict[tuple[str, str], LoadedModel] = {}
_profiles: dict[tuple, ModelProfile] = {}


def _zoo() -> dict[str, ModelConfig]:
    from saliency.models.config import read_model_config

    with _lock:
        for name in ZOO:
            if name not in _configs:
                _configs[name] = read_model_config(ZOO_DIR / f"{name}.yaml")
        return _configs


def model_specs() -> dict[str, ModelSpec]:
    """Every model by name (the zoo, then registered user configs), loaded on the CPU and probed."""
    return {name: get_spec(name) for name in list(_zoo())}


def get_spec(name: str) -> ModelSpec:
    """The spec of the named model as its probe completed it (the model loads on the CPU once)."""
    if name not in _zoo():
        raise NotFound(f"unknown model {name!r}; known models: {', '.join(sorted(_zoo()))}", "model")
    return load_model(name).spec


def register_model_config(path: str | Path) -> ModelConfig:
    """Read the model config at `path` and serve it under its name from now on (in this
    process). Raises ModelConfigError for a bad config, or one whose name another config
    already uses. Nothing is built until the model is loaded."""
    from saliency.models.config import ModelConfigError, read_model_config

    config = read_model_config(path)
    with _lock:
        known = _zoo().get(config.name)
        if known is not None and known.path != config.path:
            where = "a built-in model" if known.path.parent == ZOO_DIR else str(known.path)
            raise ModelConfigError(config.path, "name", f"{config.name!r} is already the name of {where}")
        _configs[config.name] = config
    return config


def load_model(name: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load (once per process and device), probe and return the named model, ready to serve."""
    from saliency.models.loader import load_config_model

    device = torch.device(device)
    key = (name, str(device))
    with _lock:
        if key not in _loaded:
            config = _zoo().get(name)
            if config is None:
                raise NotFound(f"unknown model {name!r}; known models: {', '.join(sorted(_zoo()))}", "model")
            if device.type == "cuda":
                # Gradients through TF32 convolutions (cuDNN's default) flip ReLU6 gates the
                # float32 model does not: maps must be the model's own, not a faster cousin's.
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
            _loaded[key] = load_config_model(config, device)
        return _loaded[key]


def load_model_config(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Register the model config at `path` and load it: the entry point for a TorchServe
    handler or a script. Raises ModelConfigError naming the YAML field for a bad config."""
    return load_model(register_model_config(path).name, device)


def profile_of(spec: ModelSpec) -> ModelProfile:
    """The probe's profile of `spec`'s model: the spec's own (every loaded model's spec has
    one); for a spec written in code (tests), a probe of a model it builds, cached."""
    if spec.profile is not None:
        return spec.profile
    key = (spec, spec.build)
    with _lock:
        if key not in _profiles:
            from saliency.models.probe import probe_model

            module = spec.build().eval()
            attention = spec.attention_layers or "auto"
            size, channels = spec.input_size, len(spec.mean)
            try:
                _profiles[key] = probe_model(
                    module, size, "module", spec.target_layer or "none", spec.classifier_layer or "none",
                    attention, channels=channels,
                )
            except InvalidArgument as exc:
                if exc.field == "model":
                    raise
                # The spec's own layers stand; the probe still judges the calls.
                _profiles[key] = probe_model(module, size, "module", "none", "none", attention, channels=channels)
        return _profiles[key]
