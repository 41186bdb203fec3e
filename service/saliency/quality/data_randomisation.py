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

import torch

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.models import LoadedModel, get_spec
from saliency.quality import digits
from saliency.quality.sanity import explain_maps
from saliency.quality.similarity import Similarity

DIGIT_SIZE = digits.INPUT_SIZE["tinycnn"]  # the 8x8 digits upscaled 2x, so CAM layers keep 8x8 maps


def load_digits(seed: int = 0) -> digits.DigitSplit:
    """scikit-learn's digits in tinycnn's input space [N, 3, 16, 16], shuffled with `seed`, 80 / 20."""
    return digits.digit_split("tinycnn", seed)


def train_tinycnn(
    x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0, lr: float = 0.01, batch_size: int = 64
) -> torch.nn.Module:
    """A fresh tinycnn (weights seeded) trained with Adam at a constant lr on x [N, 3, H, W], y [N]; eval mode."""
    return digits.train(digits.Recipe("tinycnn", epochs, lr, batch_size), x, y, seed, one_cycle=False)


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
        accuracies[f"{name}_train"] = digits.accuracy(module, data.x_train, labels)
        accuracies[f"{name}_test"] = digits.accuracy(module, data.x_test, data.y_test)
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
