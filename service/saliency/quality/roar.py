"""ROAR: RemOve And Retrain (Hooker, Erhan, Kindermans, Kim, NeurIPS 2019), and KAR.

For each saliency method and fraction k, the k % of pixels of every training and test image
that the method ranks most important are replaced by the training set's per-channel mean; a
model of the same architecture is trained from scratch on the modified training set and its
accuracy measured on the modified test set. Retraining is what separates "the pixels carried
the evidence" from "the model had never seen such images": a faithful ranking makes accuracy
fall faster than a random one. KAR (keep and retrain) removes the k % *least* important pixels
instead; there a faithful ranking keeps accuracy up.

Setup (docs/roar/report.md has the numbers):
- data: scikit-learn's digits (`quality/digits.py`), tinycnn at 16x16, tinyvit at 32x32;
- the explained model is trained once on the unmodified data (seed 0 of the model's recipe);
  maps explain its predicted class (not the label: a map chosen by the label would leak it into
  the removal pattern), one image at a time through `Engine.explain`, so every map is the
  engine's (fast pass or batched chunk executor), never a second implementation;
- ranking: |map| (signed maps by magnitude, as Hooker et al.'s grayscale maps), ties broken by
  a seeded random order, so a flat region is removed in no particular order;
- controls: uniformly random maps (seeded), and a Sobel edge magnitude of the image, a map
  that knows nothing of the model;
- retraining: the architecture's recipe with seeds 0..n-1 (initial weights and batch order).

Everything is seeded: the same arguments on the same machine (torch version, thread count)
give the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from saliency.errors import InvalidArgument, require
from saliency.quality import digits

FRACTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
QUICK_FRACTIONS = (0.0, 0.5, 0.9)
CONTROLS = ("random", "sobel")
MODELS = {"tinycnn": "tinycnn", "tinyvit_digits": "tinyvit"}  # explained model -> architecture
MAX_SEEDS = 10


@dataclass(frozen=True)
class MapMethod:
    """A row of the table: a registered engine method with its parameters, or a control."""

    label: str
    engine: str | None  # registry name; None for a control
    params: dict[str, Any] = field(default_factory=dict)


def _occlusion(size: int) -> dict[str, Any]:
    # Windows of a quarter of the side with half-window stride: 7x7 positions.
    return {"window": size // 4, "stride": size // 8}


def catalogue(size: int) -> dict[str, MapMethod]:
    """Every method ROAR can rank pixels by, for inputs of side `size`."""
    sg = {"n_samples": 16, "sigma": 0.15}
    items = [
        MapMethod("vanilla", "vanilla"),
        MapMethod("smoothgrad", "smoothgrad", sg),
        MapMethod("smoothgrad_sq", "smoothgrad", {**sg, "aggregate": "square"}),
        MapMethod("vargrad", "smoothgrad", {**sg, "aggregate": "variance"}),
        MapMethod("ig", "ig", {"n_steps": 16}),
        MapMethod("input_x_gradient", "input_x_gradient"),
        MapMethod("guided_backprop", "guided_backprop"),
        MapMethod("gradcam", "gradcam"),
        MapMethod("guided_gradcam", "guided_gradcam"),
        MapMethod("deeplift", "deeplift"),
        MapMethod("lrp", "lrp"),
        MapMethod("occlusion", "occlusion", _occlusion(size)),
        MapMethod("attention_rollout", "attention_rollout"),
        MapMethod("raw_attention", "raw_attention"),
        MapMethod("random", None),
        MapMethod("sobel", None),
    ]
    return {m.label: m for m in items}


DEFAULT_METHODS = {
    "tinycnn": ("vanilla", "smoothgrad", "smoothgrad_sq", "vargrad", "ig", "guided_backprop", "gradcam",
                "guided_gradcam", "deeplift", "lrp", "occlusion", "random", "sobel"),
    "tinyvit_digits": ("attention_rollout", "raw_attention", "ig", "input_x_gradient", "random", "sobel"),
}
QUICK_METHODS = {"tinycnn": ("vanilla", "gradcam", "random"), "tinyvit_digits": ("attention_rollout", "random")}

Progress = Callable[[str, int], None]  # (what is being done, units of work it finished)
# Units: one per retraining and one per method's maps (a method's maps cost about a retraining).


@dataclass
class RoarResult:
    """One model's ROAR (and KAR): test accuracies per method, fraction and retraining seed.

    roar / kar: {method: {fraction: [accuracy per seed]}}; fraction 0 is the unmodified data
    (the same retrainings for every method). kar is empty when not asked for.
    """

    model: str
    architecture: str
    input_size: int
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    methods: dict[str, MapMethod]
    explained_accuracy: float  # the model whose maps rank the pixels, on the unmodified test set
    fill: tuple[float, ...]  # per-channel mean of the training set (model input space)
    roar: dict[str, dict[float, list[float]]]
    kar: dict[str, dict[float, list[float]]]
    seconds: dict[str, float]

    def mean_std(self, method: str, fraction: float, kind: str = "roar") -> tuple[float, float]:
        values = np.asarray(getattr(self, kind)[method][fraction])
        return float(values.mean()), float(values.std())

    def curve_mean(self, method: str, kind: str = "roar") -> np.ndarray:
        """Per seed, the accuracy averaged over the fractions above 0: [seeds]."""
        table = getattr(self, kind)[method]
        return np.mean([table[k] for k in self.fractions if k > 0], axis=0)


def parse_fractions(text: str) -> tuple[float, ...]:
    """"0,10,30" (percent) -> (0.0, 0.1, 0.3); errors name the field `fractions`."""
    items = [item.strip() for item in text.split(",")]
    require(all(items), "fractions", f"{text!r} has an empty item")
    try:
        values = [float(item) for item in items]
    except ValueError:
        raise InvalidArgument(f"{text!r}: percentages must be numbers", "fractions") from None
    require(all(0 <= v < 100 for v in values), "fractions", f"{text!r}: each must be in [0, 100)")
    require(len(set(values)) == len(values), "fractions", f"{text!r} lists a value twice")
    require(0 in values, "fractions", f"{text!r}: 0 (the unmodified data) is needed as the reference")
    return tuple(sorted(v / 100 for v in values))


def check_methods(model: str, methods: Sequence[str], field_name: str = "methods") -> None:
    """Each method must be in the catalogue and able to explain `model`."""
    from saliency.attribution.registry import get_method
    from saliency.models import get_spec

    known = catalogue(digits.INPUT_SIZE[MODELS[model]])
    require(bool(methods), field_name, "no method given")
    require(len(set(methods)) == len(methods), field_name, "a method is listed twice")
    spec = get_spec(model)
    for i, name in enumerate(methods):
        require(name in known, f"{field_name}[{i}]", f"{name!r} is not one of {', '.join(known)}")
        engine = known[name].engine
        if engine is not None:
            reason = get_method(engine).unsupported_reason(spec)
            require(reason is None, f"{field_name}[{i}]", f"{name} cannot explain {model}: {reason}")


def explained_model(model: str):
    """The trained model whose maps rank the pixels, as a LoadedModel."""
    from saliency.models import LoadedModel, get_spec, load_model

    if model == "tinycnn":
        module = digits.trained_model(digits.RECIPES["tinycnn"])
        return LoadedModel(get_spec("tinycnn"), module, torch.device("cpu"))
    return load_model(model)


def sobel_maps(x: torch.Tensor) -> torch.Tensor:
    """Edge magnitude of the channel mean of x [N, C, H, W] -> [N, H, W] (replicate padding)."""
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    kernels = torch.stack([kx, kx.T])[:, None]  # [2, 1, 3, 3]
    gray = F.pad(x.mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate")
    return F.conv2d(gray, kernels).pow(2).sum(1).sqrt()


def method_maps(engine, x: torch.Tensor, targets: torch.Tensor, method: MapMethod, seed: int) -> torch.Tensor:
    """Maps [N, H, W] of x [N, 3, H, W] for `targets` [N]: the engine's, or a control's."""
    n, _, h, w = x.shape
    if method.label == "random":
        return torch.rand((n, h, w), generator=torch.Generator().manual_seed(seed))
    if method.label == "sobel":
        return sobel_maps(x)
    from saliency.attribution.registry import make_params
    from saliency.attribution.types import Targets

    params = {method.engine: make_params(method.engine, **method.params)}
    maps = torch.empty((n, h, w))
    for i in range(n):
        explanation = engine.explain(x[i], Targets(classes=(int(targets[i]),)), params, n_predictions=1)
        (attribution,) = [a for a in explanation.attributions if a.method == method.engine]
        maps[i] = attribution.map.detach().float().cpu()
    return maps


def importance_order(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """[N, H, W] -> pixel indices [N, H*W], most important (largest |map|) first, ties in a
    seeded random order."""
    scores = maps.abs().flatten(1).double()
    shuffle = torch.rand(scores.shape, generator=torch.Generator().manual_seed(seed)).argsort(dim=1)
    order = torch.gather(scores, 1, shuffle).argsort(dim=1, descending=True, stable=True)
    return torch.gather(shuffle, 1, order)


def remove(x: torch.Tensor, order: torch.Tensor, fraction: float, fill: torch.Tensor, keep: bool = False) -> torch.Tensor:
    """x [N, C, H, W] with round(fraction * H * W) pixels per image set to fill [C]: the first
    of `order` (ROAR), or the last (KAR: keep the most important, remove the least)."""
    n, c, h, w = x.shape
    count = int(round(fraction * h * w))
    if count == 0:
        return x.clone()
    chosen = order[:, -count:] if keep else order[:, :count]
    mask = torch.zeros((n, h * w), dtype=torch.bool).scatter_(1, chosen, True).view(n, 1, h, w)
    return torch.where(mask, fill.view(1, c, 1, 1).to(x.dtype), x)


def retrained_accuracy(architecture: str, x_train: torch.Tensor, y_train: torch.Tensor,
                       x_test: torch.Tensor, y_test: torch.Tensor, seed: int) -> float:
    """Test accuracy of a model trained from scratch (seed) on the given training set."""
    model = digits.train(digits.RECIPES[architecture], x_train, y_train, seed=seed)
    return digits.accuracy(model, x_test, y_test)


def run_roar(
    model: str = "tinycnn",
    methods: Sequence[str] | None = None,
    fractions: Sequence[float] = FRACTIONS,
    seeds: int = 3,
    kar: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
) -> RoarResult:
    """ROAR (and KAR) of `methods` (default: DEFAULT_METHODS[model]) on the digits.

    fractions: of the pixels, in [0, 1), 0 included; seeds: retrainings per (method, fraction);
    seed: of the random control and the tie-breaking order.
    """
    require(model in MODELS, "model", f"{model!r} is not one of {', '.join(MODELS)}")
    methods = tuple(DEFAULT_METHODS[model] if methods is None else methods)
    check_methods(model, methods)
    fractions = tuple(sorted(fractions))
    require(fractions[:1] == (0.0,) and all(0 <= k < 1 for k in fractions), "fractions",
            "need 0 and values in [0, 1)")
    require(1 <= seeds <= MAX_SEEDS, "seeds", f"{seeds} is outside [1, {MAX_SEEDS}]")
    from saliency.attribution.engine import Engine
    from saliency.attribution.executor import ChunkSizes

    architecture = MODELS[model]
    split = digits.digit_split(architecture)
    size = digits.INPUT_SIZE[architecture]
    table = catalogue(size)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    loaded = explained_model(model)
    explained_accuracy = digits.accuracy(loaded.module, split.x_test, split.y_test)
    engine = Engine(loaded, ChunkSizes(64, 128))
    x_all = torch.cat([split.x_train, split.x_test])
    with torch.inference_mode():
        predicted = loaded.module(x_all).argmax(1)
    fill = split.x_train.mean(dim=(0, 2, 3))  # the unmodified training set's per-channel mean
    n_train = len(split.y_train)
    report = progress or (lambda what, done: None)

    def retrain(x: torch.Tensor) -> list[float]:
        accuracies = []
        for s in range(seeds):
            accuracies.append(retrained_accuracy(architecture, x[:n_train], split.y_train, x[n_train:], split.y_test, s))
            report(f"{model}: retrain", 1)
        return accuracies

    baseline = retrain(x_all)
    seconds["baseline"] = time.perf_counter() - started
    roar: dict[str, dict[float, list[float]]] = {}
    kars: dict[str, dict[float, list[float]]] = {}
    for label in methods:
        t0 = time.perf_counter()
        report(f"{model}: {label} maps", 0)
        maps = method_maps(engine, x_all, predicted, table[label], seed)
        report(f"{model}: {label} retrain", 1)
        t1 = time.perf_counter()
        order = importance_order(maps, seed)
        roar[label] = {0.0: list(baseline)}
        if kar:
            kars[label] = {0.0: list(baseline)}
        for k in fractions[1:]:
            roar[label][k] = retrain(remove(x_all, order, k, fill))
            if kar:
                kars[label][k] = retrain(remove(x_all, order, k, fill, keep=True))
        seconds[f"{label}_maps"] = t1 - t0
        seconds[f"{label}_retrain"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - started
    return RoarResult(model, architecture, size, fractions, tuple(range(seeds)), {m: table[m] for m in methods},
                      explained_accuracy, tuple(float(v) for v in fill), roar, kars, seconds)


def work_units(model: str, n_methods: int, n_fractions: int, seeds: int, kar: bool) -> int:
    """Progress units of `run_roar`: one per retraining, one per method's maps."""
    return seeds * (1 + n_methods * (n_fractions - 1) * (2 if kar else 1)) + n_methods


# --- against the seed's claims (Hooker et al. 2019) -------------------------------------------

NO_BETTER_THAN_RANDOM = ("guided_backprop", "guided_gradcam", "ig")
LARGE_DROPS = ("smoothgrad_sq", "vargrad")


@dataclass(frozen=True)
class Comparison:
    """A method's ROAR curve against the random control's: the accuracy averaged over the
    fractions above 0, per seed; difference of means and its standard error over seeds."""

    method: str
    mean: float
    random_mean: float
    difference: float  # method - random: negative = accuracy falls faster = more faithful
    stderr: float

    @property
    def better_than_random(self) -> bool:
        """Accuracy lower than random's by more than two standard errors."""
        return self.difference < -2 * self.stderr

    @property
    def worse_than_random(self) -> bool:
        return self.difference > 2 * self.stderr


def compare_to_random(result: RoarResult, method: str, kind: str = "roar") -> Comparison:
    a, r = result.curve_mean(method, kind), result.curve_mean("random", kind)
    n = len(a)
    stderr = float(np.sqrt(a.var(ddof=1) / n + r.var(ddof=1) / n)) if n > 1 else 0.0
    return Comparison(method, float(a.mean()), float(r.mean()), float(a.mean() - r.mean()), stderr)


@dataclass(frozen=True)
class Claim:
    text: str
    method: str
    expects_better: bool  # the claim: True = large drop (better than random), False = no better
    comparison: Comparison

    @property
    def agrees(self) -> bool:
        return self.comparison.better_than_random == self.expects_better


def seed_claims(result: RoarResult) -> list[Claim]:
    """Hooker et al.'s findings, for the methods this run has (random must be among them)."""
    claims = []
    if "random" not in result.roar:
        return claims
    for method in NO_BETTER_THAN_RANDOM:
        if method in result.roar:
            claims.append(Claim(f"{method} is no better than random", method, False, compare_to_random(result, method)))
    for method in LARGE_DROPS:
        if method in result.roar:
            claims.append(Claim(f"{method} drops accuracy far more than random", method, True,
                                compare_to_random(result, method)))
    return claims
