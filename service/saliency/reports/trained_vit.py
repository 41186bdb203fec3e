"""The trained tiny ViT (`tinyvit_digits`): its accuracy, its sanity checks, and whether its
attention agrees with its gradients.

- Model randomisation (`sanity.model_randomisation`, cascading and independent) over the head,
  the two blocks and the patch embedding.
- Data randomisation: tinyvit trained with the same recipe on shuffled labels (and, as the
  control, on true labels from another seed); maps of the same test images compared.
- Attention vs gradient (Jain & Wallace 2019; Wiegreffe & Pinter 2019): per test image, the
  Spearman rank correlation of the attention-rollout map with |IG| and with |gradient x input|.
  Rollout has one value per patch (a 4x4 grid), so the gradient maps are summed per patch
  first and the 16 values compared: comparing at pixel level would correlate the bilinear
  upsampling, not the evidence. The random-weight `tinyvit` (the trained model's own initial
  weights) is the control.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from saliency.quality import digits
from saliency.quality.similarity import Similarity, spearman

if TYPE_CHECKING:
    from saliency.models import LoadedModel

SANITY_METHODS = {
    "attention_rollout": {},
    "raw_attention": {},
    "vanilla": {},
    "input_x_gradient": {},
    "ig": {"n_steps": 16},
    "gradcam": {},
}
SANITY_LAYERS = ("head", "blocks.1", "blocks.0", "patch_embed")  # top first
AGREEMENT_PAIRS = ("rollout_ig", "rollout_gxi", "ig_gxi", "rollout_ink", "ig_ink")
ACCURACY_FLOOR = 0.90  # tinyvit_digits' test accuracy is asserted above this (0.947 measured)


def _params(methods: dict[str, dict]) -> dict:
    from saliency.attribution.registry import make_params

    return {name: make_params(name, **values) for name, values in methods.items()}


@dataclass(frozen=True)
class Agreement:
    """Per image, Spearman of rollout with |IG| and with |gradient x input| per patch."""

    model: str
    rollout_ig: tuple[float, ...]
    rollout_gxi: tuple[float, ...]
    ig_gxi: tuple[float, ...]  # the two gradient methods with each other: a ceiling of sorts
    rollout_ink: tuple[float, ...]  # rollout with the ink per patch: "attends where the digit is"
    ig_ink: tuple[float, ...]

    def summary(self) -> dict[str, float]:
        out = {}
        for name in AGREEMENT_PAIRS:
            values = np.asarray(getattr(self, name))
            out[f"{name}_mean"] = float(values.mean())
            out[f"{name}_std"] = float(values.std())
            out[f"{name}_positive"] = float((values > 0).mean())
        return out


def patch_sums(saliency_map: torch.Tensor, patch: int) -> torch.Tensor:
    """|map| [H, W] summed per patch -> [H / patch, W / patch]."""
    return F.avg_pool2d(saliency_map.abs()[None, None], patch)[0, 0] * patch * patch


def ink_per_patch(x: torch.Tensor, patch: int) -> torch.Tensor:
    """The mean pixel value (ink is bright) of each patch of a normalised input [3, H, W]."""
    return F.avg_pool2d(x.mean(0)[None, None], patch)[0, 0]


def attention_agreement(model_name: str, images: torch.Tensor, ig_steps: int = 32) -> Agreement:
    """Rollout vs |IG| and |gradient x input| on images [N, 3, 32, 32], each for the model's
    predicted class (rollout is class-agnostic; the gradients are taken of that class)."""
    from saliency.attribution.engine import Engine
    from saliency.attribution.executor import ChunkSizes
    from saliency.attribution.types import Targets
    from saliency.models import load_model

    model = load_model(model_name)
    engine = Engine(model, ChunkSizes(64, 128))
    params = _params({"attention_rollout": {}, "input_x_gradient": {}, "ig": {"n_steps": ig_steps}})
    patch = digits.VIT_KWARGS["patch"]
    rows: dict[str, list[float]] = {name: [] for name in AGREEMENT_PAIRS}
    for x in images:
        explanation = engine.explain(x, Targets(top_k=1), params, n_predictions=1)
        maps = {a.method: a for a in explanation.attributions}
        rollout = maps["attention_rollout"].raw
        ig = patch_sums(maps["ig"].map, patch)
        gxi = patch_sums(maps["input_x_gradient"].map, patch)
        rows["rollout_ig"].append(spearman(rollout, ig))
        rows["rollout_gxi"].append(spearman(rollout, gxi))
        rows["ig_gxi"].append(spearman(ig, gxi))
        ink = ink_per_patch(x, patch)
        rows["rollout_ink"].append(spearman(rollout, ink))
        rows["ig_ink"].append(spearman(ig, ink))
    return Agreement(model_name, *(tuple(rows[k]) for k in AGREEMENT_PAIRS))


def rollout_grids(model_name: str, images: torch.Tensor) -> list[torch.Tensor]:
    """Attention rollout of `model_name` per patch, [4, 4], on images [N, 3, 32, 32] (the
    patch grid is what rollout resolves; its 32x32 map is that grid upsampled)."""
    from saliency.attribution.engine import Engine
    from saliency.attribution.types import Targets
    from saliency.models import load_model

    engine = Engine(load_model(model_name))
    params = _params({"attention_rollout": {}})
    return [engine.explain(x, Targets(top_k=1), params, n_predictions=1).attributions[0].raw for x in images]


@dataclass
class TrainedVitReport:
    """Everything `report roar` says of tinyvit_digits beyond its ROAR curves."""

    accuracy: dict[str, float]  # tinyvit_digits / tinycnn baseline / random tinyvit, test split
    cascading: dict[str, float]  # method -> mean Spearman |map| over the cascade (and images)
    independent: dict[str, float]
    cascade_layers: dict[str, dict[str, float]]  # method -> layer -> Spearman
    data_randomisation: dict[str, float]  # method -> true vs shuffled labels
    data_control: dict[str, float]  # method -> true vs true from another seed
    shuffled_accuracy: dict[str, float]  # train / test of the shuffled-label model
    agreement: dict[str, dict[str, float]]  # model -> Agreement.summary()
    rollout_vs_random: float  # mean Spearman, trained vs random-weight rollout per patch
    n_sanity_images: int
    n_agreement_images: int


def run_trained_vit(
    n_sanity_images: int = 8, n_agreement_images: int = 64, progress: Callable[[str], None] | None = None,
) -> TrainedVitReport:
    """Accuracy, model and data randomisation, and attention-vs-gradient agreement."""
    from saliency.models import load_model
    from saliency.quality.sanity import model_randomisation

    say = progress or (lambda message: None)
    split = digits.digit_split("tinyvit")
    trained = load_model("tinyvit_digits")
    accuracies = {
        "tinyvit_digits": digits.accuracy(trained.module, split.x_test, split.y_test),
        "tinycnn_digits": digits.accuracy(digits.trained_model(digits.RECIPES["tinycnn"]),
                                          digits.digit_split("tinycnn").x_test, digits.digit_split("tinycnn").y_test),
        "tinyvit_random": digits.accuracy(load_model("tinyvit").module, split.x_test, split.y_test),
    }
    say(f"tinyvit_digits test accuracy {accuracies['tinyvit_digits']:.3f}")
    images = list(split.x_test[:n_sanity_images])
    targets = [int(t) for t in split.y_test[:n_sanity_images]]
    methods = _params(SANITY_METHODS)
    sanity = model_randomisation(trained, images, methods, SANITY_LAYERS, targets=targets)
    cascading = {m: float(np.mean([r.similarity.spearman_abs for r in sanity.results
                                   if r.mode == "cascading" and r.method == m])) for m in methods}
    independent = {m: float(np.mean([r.similarity.spearman_abs for r in sanity.results
                                     if r.mode == "independent" and r.method == m])) for m in methods}
    layers = {m: {layer: sanity.get("cascading", layer, m).similarity.spearman_abs for layer in SANITY_LAYERS}
              for m in methods}
    say("tinyvit_digits model randomisation done")
    data, control, shuffled_acc = _data_randomisation(trained, images, targets, methods, split)
    say("tinyvit_digits data randomisation done")
    agreement_images = split.x_test[:n_agreement_images]
    agreement = {name: attention_agreement(name, agreement_images).summary() for name in ("tinyvit_digits", "tinyvit")}
    trained_rollout = rollout_grids("tinyvit_digits", agreement_images)
    random_rollout = rollout_grids("tinyvit", agreement_images)
    versus = float(np.mean([spearman(a, b) for a, b in zip(trained_rollout, random_rollout)]))
    say("attention vs gradient agreement done")
    return TrainedVitReport(accuracies, cascading, independent, layers, data, control, shuffled_acc, agreement, versus,
                            n_sanity_images, n_agreement_images)


def _data_randomisation(trained: LoadedModel, images: Sequence[torch.Tensor], targets: Sequence[int], methods: dict,
                        split: digits.DigitSplit) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """`trained` (tinyvit_digits) against tinyvit retrained on shuffled labels and, the control,
    on true labels from another seed: mean Spearman |map| per method, and the shuffled model's accuracy."""
    from saliency.attribution.engine import Engine
    from saliency.models import LoadedModel
    from saliency.quality.sanity import explain_maps

    recipe = digits.RECIPES["tinyvit"]
    shuffled = split.y_train[torch.randperm(len(split.y_train), generator=torch.Generator().manual_seed(1))]
    spec = trained.spec
    models = {
        "true": trained.module,
        "shuffled": digits.train(recipe, split.x_train, shuffled),
        "control": digits.train(recipe, split.x_train, split.y_train, seed=recipe.seed + 1),
    }
    maps = {name: explain_maps(Engine(LoadedModel(spec, module, torch.device("cpu"))), images, targets, methods)
            for name, module in models.items()}

    def mean_similarity(other: str) -> dict[str, float]:
        return {m: float(np.mean([Similarity.of(t[m], o[m]).spearman_abs for t, o in zip(maps["true"], maps[other])]))
                for m in methods}

    accuracy = {"train": digits.accuracy(models["shuffled"], split.x_train, shuffled),
                "test": digits.accuracy(models["shuffled"], split.x_test, split.y_test)}
    return mean_similarity("shuffled"), mean_similarity("control"), accuracy
