"""Channel reductions and upsampling shared by several methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHANNEL_REDUCTIONS = ("max", "sum", "l2")


def reduce_channels(attr: torch.Tensor, how: str) -> torch.Tensor:
    """[..., C, H, W] -> [..., H, W]. `max` and `l2` are of magnitudes; `sum` keeps the sign."""
    if how == "max":
        return attr.abs().amax(dim=-3)
    if how == "sum":
        return attr.sum(dim=-3)
    if how == "l2":
        return attr.pow(2).sum(dim=-3).sqrt()
    raise ValueError(f"unknown channel reduction {how!r}")


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[..., h, w] -> [..., H, W] bilinear (align_corners=False, as Captum's interpolate)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return up.reshape(*lead, *size)
