"""Reference inputs x' for the methods that compare the input with a baseline (IG, DeepLIFT).

One definition, so "baseline=blur" means the same image for every method that offers it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saliency.errors import require
from saliency.models import LoadedModel

BASELINES = ("zeros", "black", "blur", "uniform", "custom")


def validate_baseline(method: str, baseline: str, custom: torch.Tensor | None) -> None:
    """Check a custom baseline's tensor (the fields' own bounds are declared in their metadata);
    errors name "<method>.custom_baseline"."""
    if baseline == "custom":
        require(custom is not None, f"{method}.custom_baseline", "baseline='custom' needs a tensor")
        require(bool(torch.isfinite(custom).all()), f"{method}.custom_baseline", "contains NaN or Inf")


def make_reference(
    method: str,
    model: LoadedModel,
    x: torch.Tensor,
    baseline: str,
    blur_sigma: float,
    seed: int,
    custom: torch.Tensor | None,
) -> torch.Tensor:
    """The reference input x' [C, H, W] in the model's input space, for x [C, H, W].

    zeros: zeros of the model input space (the dataset's mean colour); black: the normalised
    black pixel; uniform: normalised uniform noise from `seed`; blur: x blurred (sigma in
    pixels); custom: the caller's tensor, which must have x's shape.
    """
    if baseline == "zeros":
        return torch.zeros_like(x)
    if baseline == "black":
        return model.spec.normalize(torch.zeros_like(x))
    if baseline == "uniform":
        g = torch.Generator().manual_seed(seed)
        return model.spec.normalize(torch.rand(x.shape, generator=g)).to(x)
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma)
    b = custom.to(x)
    require(b.shape == x.shape, f"{method}.custom_baseline", f"shape {list(b.shape)} != input {list(x.shape)}")
    return b


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [C, H, W] with reflect padding (radius 3 sigma)."""
    radius = min(int(3 * sigma), min(x.shape[-2:]) - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.conv2d(y, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return y[0]
