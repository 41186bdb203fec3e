"""Input invariance (Kindermans et al. 2017, "The (Un)reliability of Saliency Methods").

Two models that compute the same function up to a constant shift of the input must get the
same explanation: model 2 sees x + c and its first layer subtracts what the shift adds, so
model2(x + c) == model1(x) exactly, layer by layer. A method whose map changes under that
shift reacts to a constant offset the model itself ignores: it is not input invariant.

The shift is absorbed in the first affine layer (the first Conv2d or Linear in forward order)
as L2(x) = L(x) - (L(c) - L(0)): for any affine L (padding included), L2(x + c) = L(x).
Away from the borders L(c) - L(0) is one constant per output channel, i.e. a bias change as
in the paper; at zero-padded borders it varies, so the correction is a per-location bias
(computed once per input size). It lives on a deep copy; the served model is untouched.

Expected (the paper): gradients, SmoothGrad, Grad-CAM and guided backpropagation are
invariant (everything after the first layer is identical); input x gradient and IG with a
zero baseline are not; IG whose baseline is shifted with the input (x' + c) is.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.types import Targets
from saliency.models import LoadedModel

# Relative L2 change above which a map "changes". Exact arithmetic gives 0; float32 rounding
# flips a few ReLU6 gates on EfficientNet-Lite0 and moves invariant maps by up to ~5e-3, while
# the maps that do change move by O(1).
CHANGE_TOLERANCE = 1e-2
DEFAULT_CHUNKS = ChunkSizes(8, 8)  # samples per model call (callers that measured pass theirs)


class ShiftAbsorbed(nn.Module):
    """Wraps an affine `layer`: forward(x) = layer(x) - (layer(c) - layer(0)), c = `shift`."""

    def __init__(self, layer: nn.Module, shift: float):
        super().__init__()
        self.layer = layer
        self.shift = shift
        self._corrections: dict[tuple, torch.Tensor] = {}

    def correction(self, like: torch.Tensor) -> torch.Tensor:
        """layer(c) - layer(0) for inputs shaped like `like` [B, ...], as [1, ...]."""
        key = (tuple(like.shape[1:]), like.dtype, like.device)
        if key not in self._corrections:
            with torch.inference_mode(False), torch.no_grad():
                zeros = torch.zeros((1, *like.shape[1:]), dtype=like.dtype, device=like.device)
                self._corrections[key] = (self.layer(zeros + self.shift) - self.layer(zeros)).detach()
        return self._corrections[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) - self.correction(x)


def first_affine_layer(module: nn.Module) -> str:
    """The dotted name of the first Conv2d or Linear in registration (forward) order."""
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return name
    raise ValueError("the model has no Conv2d or Linear layer to absorb a shift into")


def shifted_model(model: LoadedModel, shift: float) -> LoadedModel:
    """A copy of `model` that, fed x + shift, computes exactly what `model` computes on x."""
    module = copy.deepcopy(model.module).eval()
    name = first_affine_layer(module)
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, ShiftAbsorbed(getattr(parent, child), shift))
    return LoadedModel(model.spec, module, model.device)


@dataclass(frozen=True)
class Variant:
    """A method as tested: `params` for the original model; `shifted_params` for the shifted
    one (None: the same params). `label` names it in reports (e.g. ig_zero_baseline)."""

    label: str
    method: str
    params: Any
    shifted_params: Any = None


def ig_variants(ig_params: Any, shift: float, shape: Sequence[int]) -> list[Variant]:
    """IG with a zero baseline for both models, and IG whose baseline moves with the input."""
    zero = replace(ig_params, baseline="zeros", custom_baseline=None)
    moved = replace(ig_params, baseline="custom", custom_baseline=torch.full(tuple(shape), float(shift)))
    return [Variant("ig_zero_baseline", "ig", zero), Variant("ig_shifted_baseline", "ig", zero, moved)]


@dataclass(frozen=True)
class InvarianceResult:
    """Relative L2 change ||m2 - m1|| / ||m1|| of each image's map; `changes` if the mean
    exceeds CHANGE_TOLERANCE."""

    label: str
    relative_change: tuple[float, ...]

    @property
    def mean_change(self) -> float:
        return float(sum(self.relative_change) / len(self.relative_change))

    @property
    def changes(self) -> bool:
        return self.mean_change > CHANGE_TOLERANCE


def input_invariance(
    model: LoadedModel,
    images: Sequence[torch.Tensor],
    variants: Sequence[Variant],
    shift: float = 1.0,
    targets: Sequence[int] | None = None,
    chunk_sizes: ChunkSizes = DEFAULT_CHUNKS,
) -> dict[str, InvarianceResult]:
    """Maps of `model` on x against maps of the shifted copy on x + shift, per variant.

    images: normalised inputs [3, H, W]; targets: one class per image (default: top-1 of the
    original model, which the shifted model shares).
    """
    original, shifted = Engine(model, chunk_sizes), Engine(shifted_model(model, shift), chunk_sizes)
    changes: dict[str, list[float]] = {v.label: [] for v in variants}
    for i, x in enumerate(images):
        target = Targets(classes=(targets[i],)) if targets is not None else Targets()
        for v in variants:
            m1 = _one_map(original, x, target, v.method, v.params)
            m2 = _one_map(shifted, x + shift, target, v.method, v.shifted_params or v.params)
            changes[v.label].append(float((m2 - m1).norm() / m1.norm().clamp_min(1e-12)))
    return {label: InvarianceResult(label, tuple(values)) for label, values in changes.items()}


def _one_map(engine: Engine, x: torch.Tensor, targets: Targets, method: str, params: Any) -> torch.Tensor:
    (attribution,) = engine.explain(x, targets, {method: params}).attributions
    return attribution.map.detach().float().cpu()
