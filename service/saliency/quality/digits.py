"""Tiny models trained on scikit-learn's digits, deterministically, with a weights cache.

The digits (1797 8x8 images in 10 classes) ship inside scikit-learn: nothing is downloaded.
Pixels 0..16 become [0, 1] (ink bright on black), are upsampled bilinearly to the model's input
and replicated to 3 channels; 20 % is held out with a seeded split. The data randomisation
check (`data_randomisation`) loads and trains its tinycnn through this module too.

Two architectures, each with one training recipe (Adam, one-cycle learning rate, batches in a
seeded order, weights initialised from the same seed):
- `tinyvit` at 32x32 (its position embedding fixes the 4x4 grid of 8x8 patches);
- `tinycnn` at 16x16, as in the data randomisation check: its three 3x3 convolutions see 9
  pixels, most of a 16x16 digit but only a stroke of a 32x32 one (0.89 test accuracy after 20
  epochs at 32x32 against 0.97 at 16x16, measured here).

`trained_model` caches the state_dict under `cache_dir()` keyed by the SHA-256 of everything
that decides the weights (recipe, data, torch version), so the zoo's `tinyvit_digits` trains
once per machine (a few seconds) and loads from the cache afterwards. The file is read with
`weights_only=True`; one that does not load is trained again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("tinycnn", "tinyvit")
VIT_KWARGS = {"image_size": 32, "patch": 8, "dim": 32, "heads": 2, "depth": 2, "num_classes": 10}
INPUT_SIZE = {"tinycnn": 16, "tinyvit": 32}
# Model-input normalisation of each architecture (the zoo configs' mean and std).
NORMALISATION = {"tinycnn": (0.5, 0.25), "tinyvit": (0.5, 0.5)}
DIGIT_LABELS = tuple(f"digit_{i}" for i in range(10))
TEST_FRACTION = 0.2
CACHE_ENV = "SALIENCY_CACHE_DIR"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a trained model's weights, with the data and torch's version."""

    architecture: str
    epochs: int
    lr: float
    batch_size: int = 128
    seed: int = 0  # initial weights and batch order
    split_seed: int = 0


# Chosen on this machine: short schedules that reach ~0.95 test accuracy (batches of 128 take half
# the CPU time of 64 for the same accuracy: these models are small enough for per-step overhead
# to dominate). ROAR retrains hundreds of times, so every second here counts.
RECIPES = {
    "tinycnn": Recipe("tinycnn", epochs=20, lr=0.04, batch_size=128),
    "tinyvit": Recipe("tinyvit", epochs=15, lr=0.005, batch_size=128),
}


@dataclass(frozen=True)
class DigitSplit:
    """Train / test inputs [N, 3, S, S] in the model's input space, labels [N] (int64)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digit_pixels(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as pixels in [0, 1], [1797, 3, size, size], and their labels [1797]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images.repeat(1, 3, 1, 1), torch.from_numpy(data.target.astype(np.int64))


def normalise(pixels: torch.Tensor, architecture: str) -> torch.Tensor:
    mean, std = NORMALISATION[architecture]
    return (pixels - mean) / std


@lru_cache(maxsize=4)
def digit_split(architecture: str, split_seed: int = 0) -> DigitSplit:
    """The architecture's inputs, shuffled with `split_seed` and split 80 / 20 (cached; read-only)."""
    pixels, y = digit_pixels(INPUT_SIZE[architecture])
    x = normalise(pixels, architecture)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(TEST_FRACTION * len(y)))
    test, train = order[:n_test], order[n_test:]
    return DigitSplit(x[train], y[train], x[test], y[test])


def build(architecture: str, seed: int) -> nn.Module:
    """A fresh model of the architecture with weights seeded by `seed` (eval mode)."""
    if architecture == "tinycnn":
        from saliency.models.tinycnn import build_tinycnn

        return build_tinycnn(seed)
    if architecture == "tinyvit":
        from saliency.models.vit import build_vit

        return build_vit(**VIT_KWARGS, seed=seed)
    raise ValueError(f"unknown architecture {architecture!r}; known: {ARCHITECTURES}")


def train(
    recipe: Recipe, x: torch.Tensor, y: torch.Tensor, seed: int | None = None, one_cycle: bool = True
) -> nn.Module:
    """Train a fresh model by `recipe` on x [N, 3, S, S], y [N]; returns it in eval mode.

    seed overrides the recipe's (initial weights and batch order); one_cycle=False keeps the
    learning rate constant (the data randomisation check's recipe). Deterministic for a given
    seed, data, torch version and thread count.
    """
    seed = recipe.seed if seed is None else seed
    model = build(recipe.architecture, seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    steps_per_epoch = -(-len(y) // recipe.batch_size)
    schedule = (torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
                if one_cycle else None)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(recipe.epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), recipe.batch_size):
                batch = order[start : start + recipe.batch_size]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on x [N, 3, S, S] against y [N]."""
    with torch.inference_mode():
        correct = sum(int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                      for i in range(0, len(y), batch_size))
    return correct / len(y)


def cache_dir() -> Path:
    """$SALIENCY_CACHE_DIR, else $XDG_CACHE_HOME/saliency, else ~/.cache/saliency."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "saliency"


def recipe_key(recipe: Recipe) -> str:
    """SHA-256 (hex, 16 characters) of the recipe, the training data and torch's version."""
    split = digit_split(recipe.architecture, recipe.split_seed)
    digest = hashlib.sha256(json.dumps({**asdict(recipe), "torch": torch.__version__}, sort_keys=True).encode())
    for t in (split.x_train, split.y_train):
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def trained_model(recipe: Recipe, cache: Path | None = None) -> nn.Module:
    """The model `recipe` trains on the digits' training split, from the cache when there."""
    directory = cache_dir() if cache is None else cache
    path = directory / f"{recipe.architecture}_digits-{recipe_key(recipe)}.pt"
    model = build(recipe.architecture, recipe.seed)
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception:  # a truncated or foreign file: train again and replace it
            pass
    split = digit_split(recipe.architecture, recipe.split_seed)
    model = train(recipe, split.x_train, split.y_train)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as f:
            torch.save(model.state_dict(), f)
        os.replace(f.name, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError:
        pass  # an unwritable cache costs a retraining next time, nothing else
    return model


def build_tinyvit_digits() -> nn.Module:
    """The zoo's `tinyvit_digits`: tinyvit trained on the digits (cached; see `trained_model`)."""
    return trained_model(RECIPES["tinyvit"])
