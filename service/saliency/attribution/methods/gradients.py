"""Gradient maps from the prediction's own backward (fast methods).

- vanilla (Simonyan et al. 2014): |dS_c/dx|, reduced over channels (max by default, as the
  paper; also sum and l2).
- input_x_gradient: x * dS_c/dx, signed, summed over channels by default (Captum's
  InputXGradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saliency.attribution.fast_inputs import FastInputs
from saliency.attribution.reduce import CHANNEL_REDUCTIONS, reduce_channels
from saliency.attribution.registry import INPUT_GRAD, register


@dataclass(frozen=True)
class GradientParams:
    """Channel reduction of the per-channel map: max |g| (Simonyan et al.), sum, or l2."""

    reduction: str = field(default="max", metadata={"choices": CHANNEL_REDUCTIONS})


@dataclass(frozen=True)
class InputXGradientParams(GradientParams):
    reduction: str = field(default="sum", metadata={"choices": CHANNEL_REDUCTIONS})


@register(
    "vanilla", "fast", GradientParams, "vanilla gradient |dS/dx| (Simonyan et al. 2014)",
    enum="METHOD_VANILLA", oneof="gradient", needs_from_pass=(INPUT_GRAD,), example={"reduction": "l2"},
)
def vanilla(params: GradientParams, inputs: FastInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """map [n, H, W] reduced over channels; raw |g| [n, C, H, W]."""
    magnitude = inputs.input_grad.contiguous().abs()
    return reduce_channels(magnitude, params.reduction), magnitude


@register(
    "input_x_gradient", "fast", InputXGradientParams, "input x gradient", signed=True,
    enum="METHOD_INPUT_X_GRADIENT", oneof="gradient", needs_from_pass=(INPUT_GRAD,),
    example={"reduction": "max"},
)
def input_x_gradient(params: InputXGradientParams, inputs: FastInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """map [n, H, W] reduced over channels; raw x * g [n, C, H, W]."""
    product = inputs.x.contiguous() * inputs.input_grad.contiguous()
    return reduce_channels(product, params.reduction), product
