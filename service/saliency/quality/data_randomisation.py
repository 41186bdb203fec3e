"""Data-randomisation check (Adebayo et al. 2018, section 4): train the same architecture on
true and on shuffled labels and compare the maps of the two models on the same images.

A method whose maps do not depend on the relation between images and labels explains the
architecture and the input, not what the model learned: its maps stay alike. The dataset is
scikit-learn's handwritten digits (1797 8x8 images in 10 classes, shipped inside the package,
no download), upscaled to 16x16 and replicated to 3 channels for `tinycnn`; 20 % is held out.
Training is CPU-cheap (Adam, a few seconds). Both models start from the same seeded weights
and see batches in the same order; only the labels differ. Maps are compared for the image's
true class, the same class for both models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.models import LoadedModel, get_spec
from saliency.models.tinycnn import build_tinycnn
from saliency.quality.sanity import explain_maps
from saliency.quality.similarity import Similarity

DIGIT_SIZE = 16  # the 8x8 digits are upscaled 2x (bilinear) so CAM layers keep 8x8 maps


@dataclass(frozen=True)
class Digits:
    """Train / test split, inputs [N, 3, 16, 16] in tinycnn's input space, labels [N]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Digits:
    """scikit-learn's digits, shuffled with `seed` and split; pixels 0..16 -> [0, 1] -> tinycnn."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8]
    images = F.interpolate(images, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", align_corners=False)
    x = get_spec("tinycnn").normalize(images.repeat(1, 3, 1, 1).clamp(0, 1))
    y = torch.from_numpy(data.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Digits(x[train], y[train], x[test], y[test])


def train_tinycnn(
    x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0, lr: float = 0.01, batch_size: int = 64
) -> torch.nn.Module:
    """A fresh tinycnn (weights seeded) trained with Adam on x [N, 3, H, W], y [N]; eval mode."""
    model = build_tinycnn(seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), batch_size):
                batch = order[start : start + batch_size]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()


def accuracy(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((module(x).argmax(1) == y).float().mean())


@dataclass(frozen=True)
class DataRandomisationResult:
    """Accuracies of the models and, per method, how alike their maps are (mean over images).

    similarity: true-label model vs shuffled-label model (the check: should be low).
    control: true-label model vs a second true-label model trained from another seed, i.e.
    how alike the maps of two equally good models are; None when not asked for.
    """

    epochs: int
    accuracy: dict[str, float]  # {model}_{train|test} for model in true, shuffled (, control)
    similarity: dict[str, Similarity]
    per_image: dict[str, tuple[Similarity, ...]]
    control: dict[str, Similarity] | None = None


def data_randomisation(
    methods: Mapping[str, Any],
    epochs: int = 30,
    n_images: int = 16,
    seed: int = 0,
    control: bool = True,
    progress: Callable[[str], None] | None = None,
) -> DataRandomisationResult:
    """Train tinycnn on digits with true and with shuffled labels (and, for `control`, true
    labels from another seed); compare maps on the first `n_images` test images.
    methods: {name: validated params}."""
    data = load_digits(seed)
    shuffled = data.y_train[torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed + 1))]
    runs = {"true": (data.y_train, seed), "shuffled": (shuffled, seed)}
    if control:
        runs["control"] = (data.y_train, seed + 1)
    spec = get_spec("tinycnn")
    images, targets = data.x_test[:n_images], data.y_test[:n_images].tolist()
    accuracies, maps = {}, {}
    for name, (labels, init_seed) in runs.items():
        module = train_tinycnn(data.x_train, labels, epochs, init_seed)
        accuracies[f"{name}_train"] = accuracy(module, data.x_train, labels)
        accuracies[f"{name}_test"] = accuracy(module, data.x_test, data.y_test)
        engine = Engine(LoadedModel(spec, module, torch.device("cpu")), ChunkSizes(16, 32))
        maps[name] = explain_maps(engine, images, targets, methods)
        if progress is not None:
            progress(f"trained tinycnn on {name} labels: test accuracy {accuracies[f'{name}_test']:.3f}")

    def compare(other: str) -> dict[str, tuple[Similarity, ...]]:
        return {
            method: tuple(Similarity.of(t[method], o[method]) for t, o in zip(maps["true"], maps[other]))
            for method in methods
        }

    per_image = compare("shuffled")
    controls = compare("control") if control else None
    return DataRandomisationResult(
        epochs,
        accuracies,
        {m: Similarity.mean(list(v)) for m, v in per_image.items()},
        per_image,
        None if controls is None else {m: Similarity.mean(list(v)) for m, v in controls.items()},
    )
