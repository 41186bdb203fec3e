"""Model-randomisation sanity checks (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A map that explains a model must change when the model's learned parameters are destroyed.
Two schedules, over "layers" named by module path (`_blocks.7`, `fc`, ...), each standing for
every parameterised module under it:
- cascading: randomise from the output down to and including the layer, one step per layer,
  top first; every module after the layer in forward order is randomised too;
- independent: randomise that layer alone.
After each step the maps of the original target class (the original model's top-1 unless
given) are compared with the original maps (`similarity.Similarity`).

Randomisation redraws each parameter tensor from a Gaussian with that tensor's own mean and
standard deviation (BatchNorm running statistics are kept). Scale-preserving on purpose: the
activations neither vanish nor explode, so a map cannot "pass" by collapsing to zero. Draws are
seeded per module name, so a layer gets the same weights in both schedules. Randomisation
always happens on a deep copy: the served model is never touched (`weights_hash` proves it).
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.types import Targets
from saliency.errors import DeadlineExceeded, InvalidArgument, require
from saliency.models import LoadedModel
from saliency.quality.similarity import SIMILARITY_FIELDS, Similarity
from saliency.wire.types import SimilarityRow  # the API's type: SanityCheckResponse rows

MODES = ("cascading", "independent")
MAX_LAYERS = 32
DEFAULT_CHUNKS = ChunkSizes(8, 8)  # samples per model call (callers that measured pass theirs)
# Checkpoints, top first: the classifier, the head, the last blocks, a middle block, the stem.
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": (
        "_fc", "_conv_head", "_blocks.15", "_blocks.14", "_blocks.11", "_blocks.7", "_blocks.3", "_conv_stem",
    ),
    "tinycnn": ("fc", "conv3", "conv2", "conv1"),
}

Progress = Callable[[int, int, str], None]  # (states done, states in all, what was done)


def parameterised_modules(module: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in registration (forward) order."""
    return [name for name, m in module.named_modules() if name and any(True for _ in m.parameters(recurse=False))]


def default_layers(model: LoadedModel) -> tuple[str, ...]:
    """The zoo's checkpoints for this model, or else every top-level child with parameters."""
    if model.spec.name in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[model.spec.name]
    children = [n for n, m in model.module.named_children() if any(True for _ in m.parameters())]
    return tuple(reversed(children))


def _members(leaves: Sequence[str], layer: str) -> list[int]:
    return [i for i, name in enumerate(leaves) if name == layer or name.startswith(layer + ".")]


def resolve_layers(module: nn.Module, layers: Sequence[str], field: str = "layers") -> tuple[str, ...]:
    """Check that every layer names parameters of `module`; return them top (output) first."""
    require(len(layers) <= MAX_LAYERS, field, f"{len(layers)} layers given, at most {MAX_LAYERS}")
    leaves = parameterised_modules(module)
    first_leaf = {}
    for i, layer in enumerate(layers):
        members = _members(leaves, layer)
        if not members:
            raise InvalidArgument(
                f"{layer!r} names no module with parameters; e.g. {', '.join(leaves[-3:][::-1])}",
                f"{field}[{i}]",
            )
        require(layer not in first_leaf, f"{field}[{i}]", f"{layer!r} is listed twice")
        first_leaf[layer] = members[0]
    return tuple(sorted(first_leaf, key=lambda layer: -first_leaf[layer]))


def cascade_modules(module: nn.Module, layer: str) -> list[str]:
    """Every parameterised module from `layer`'s first one to the output, in forward order."""
    leaves = parameterised_modules(module)
    return leaves[min(_members(leaves, layer)) :]


def layer_modules(module: nn.Module, layer: str) -> list[str]:
    leaves = parameterised_modules(module)
    return [leaves[i] for i in _members(leaves, layer)]


def randomize_modules(module: nn.Module, names: Sequence[str], seed: int) -> None:
    """Redraw, in place, every parameter of the named modules: N(mean, std) of that tensor.

    A constant tensor (std 0) carries no learned structure and is kept. Seeded per module, so
    a module gets the same draw whatever else is randomised with it.
    """
    modules = dict(module.named_modules())
    with torch.no_grad():
        for name in names:
            generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
            for _, p in sorted(modules[name].named_parameters(recurse=False)):
                values = p.detach().double()
                std = float(values.std()) if values.numel() > 1 else 0.0
                if std == 0.0:
                    continue
                noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
                p.copy_((noise * std + float(values.mean())).to(p.dtype))


def copy_model(model: LoadedModel) -> LoadedModel:
    """A deep copy to randomise; the served module is only read."""
    return LoadedModel(model.spec, copy.deepcopy(model.module).eval(), model.device)


@dataclass(frozen=True)
class LayerResult:
    """One randomisation state of one method: similarities per image and their mean."""

    mode: str  # cascading | independent
    layer: str
    method: str
    per_image: tuple[Similarity, ...]

    @property
    def similarity(self) -> Similarity:
        return Similarity.mean(list(self.per_image))


@dataclass
class SanityResult:
    """Model-randomisation outcome. maps: {(mode, layer): {method: map [H, W]}} of the first
    image, ("original", "") included, when asked to keep them (for pictures)."""

    model: str
    layers: tuple[str, ...]  # top first
    targets: tuple[int, ...]  # per image
    results: list[LayerResult]
    maps: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)

    def rows(self) -> list[SimilarityRow]:
        return [
            SimilarityRow(r.mode, r.layer, r.method, *(getattr(r.similarity, f) for f in SIMILARITY_FIELDS))
            for r in self.results
        ]

    def get(self, mode: str, layer: str, method: str) -> LayerResult:
        for r in self.results:
            if (r.mode, r.layer, r.method) == (mode, layer, method):
                return r
        raise KeyError((mode, layer, method))


def explain_maps(
    engine: Engine, images: Sequence[torch.Tensor], targets: Sequence[int], methods: Mapping[str, Any]
) -> list[dict[str, torch.Tensor]]:
    """Per image [3, H, W] {method: map [H, W]} for its target class."""
    out = []
    for x, target in zip(images, targets):
        explanation = engine.explain(x, Targets(classes=(int(target),)), methods)
        out.append({a.method: a.map.detach().float().cpu() for a in explanation.attributions})
    return out


def model_randomisation(
    model: LoadedModel,
    images: Sequence[torch.Tensor],
    methods: Mapping[str, Any],
    layers: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    targets: Sequence[int] | None = None,
    seed: int = 0,
    chunk_sizes: ChunkSizes = DEFAULT_CHUNKS,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_maps: bool = False,
) -> SanityResult:
    """Run the cascading and/or independent schedules on copies of `model`.

    images: normalised inputs [3, H, W]; methods: {name: validated params}; layers: None for
    `default_layers`; targets: one class per image (default: the original top-1).
    should_stop: polled between states; True raises DeadlineExceeded.
    """
    for i, mode in enumerate(modes):
        require(mode in MODES, f"randomizations[{i}]", f"{mode!r} is not one of {MODES}")
    require(bool(images), "images", "no image to explain")
    layers = resolve_layers(model.module, default_layers(model) if layers is None else layers)
    original_engine = Engine(model, chunk_sizes)
    if targets is None:
        from saliency.attribution.fast import fast_pass

        targets = [fast_pass(model, x[None], [Targets()], {})[0].targets[0] for x in images]
    require(len(targets) == len(images), "targets", "need one target per image")
    original = explain_maps(original_engine, images, targets, methods)
    result = SanityResult(model.spec.name, layers, tuple(targets), [])
    if keep_maps:
        result.maps[("original", "")] = original[0]
    total = len(modes) * len(layers)
    done = 0

    def record(mode: str, layer: str, engine: Engine) -> None:
        nonlocal done
        if should_stop is not None and should_stop():
            raise DeadlineExceeded(f"stopped after {done} of {total} randomisation states")
        maps = explain_maps(engine, images, targets, methods)
        for method in methods:
            per_image = tuple(Similarity.of(o[method], m[method]) for o, m in zip(original, maps))
            result.results.append(LayerResult(mode, layer, method, per_image))
        if keep_maps:
            result.maps[(mode, layer)] = maps[0]
        done += 1
        if progress is not None:
            progress(done, total, f"{mode} {layer}")

    if "cascading" in modes:
        cascade = copy_model(model)
        randomized: set[str] = set()
        for layer in layers:  # top first: each step adds the modules down to this layer
            fresh = [n for n in cascade_modules(cascade.module, layer) if n not in randomized]
            randomize_modules(cascade.module, fresh, seed)
            randomized.update(fresh)
            record("cascading", layer, Engine(cascade, chunk_sizes))
    if "independent" in modes:
        for layer in layers:
            alone = copy_model(model)
            randomize_modules(alone.module, layer_modules(alone.module, layer), seed)
            record("independent", layer, Engine(alone, chunk_sizes))
    return result
