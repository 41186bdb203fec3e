"""RISE (Petsiuk et al. 2018): randomised input sampling, forward-only.

saliency = sum_i P(target | x * M_i) * M_i / (N * p). Masks are s x s Bernoulli(p) grids,
bilinearly upsampled to (s + 1) cells and randomly shifted by up to one cell, as in the paper.
Masked-out pixels become 0 in the model's input space (the dataset mean colour after
normalisation). The bank for (H, W, N, s, p, seed) is built once and cached (float16, with an
LRU byte budget): building it costs ~125 ms for N=2000 at 224x224 here (about 18 forwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from saliency.attribution.cache import TensorCache
from saliency.attribution.executor import ChunkOutput, DeepTask, SampleStream
from saliency.attribution.limits import Limits
from saliency.attribution.registry import register
from saliency.attribution.types import Attribution
from saliency.errors import require


@dataclass(frozen=True)
class RiseParams:
    n_masks: int = field(default=2000, metadata={"min": 1, "max_limit": "max_rise_masks"})
    # s: cells per side of the low-resolution mask
    grid_size: int = field(default=7, metadata={"min": 2, "max": 64})
    # probability that a cell is kept, in the open interval (0, 1)
    p: float = field(default=0.5, metadata={"min": 0, "max": 1, "exclusive_min": True, "exclusive_max": True})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**63 - 1})

    def validate(self, limits: Limits) -> None:
        require(
            1 <= self.n_masks <= limits.max_rise_masks,
            "rise.n_masks",
            f"{self.n_masks} is outside [1, {limits.max_rise_masks}]",
        )
        require(2 <= self.grid_size <= 64, "rise.grid_size", f"{self.grid_size} is outside [2, 64]")
        require(0 < self.p < 1, "rise.p", f"{self.p} is outside the open interval (0, 1)")
        require(0 <= self.seed < 2**63, "rise.seed", "must be in [0, 2^63)")


def build_mask_bank(height: int, width: int, n: int, s: int, p: float, seed: int) -> torch.Tensor:
    """[n, H, W] float16 masks in [0, 1], deterministic for the arguments."""
    generator = torch.Generator().manual_seed(seed)
    cell_h, cell_w = math.ceil(height / s), math.ceil(width / s)
    up_h, up_w = (s + 1) * cell_h, (s + 1) * cell_w
    bank = torch.empty(n, height, width, dtype=torch.float16)
    block = 128  # bounds the float32 temporaries of the upsampling
    for start in range(0, n, block):
        m = min(block, n - start)
        grids = (torch.rand(m, 1, s, s, generator=generator) < p).float()
        up = F.interpolate(grids, size=(up_h, up_w), mode="bilinear", align_corners=False)[:, 0]
        dy = torch.randint(0, cell_h, (m,), generator=generator)
        dx = torch.randint(0, cell_w, (m,), generator=generator)
        for i in range(m):
            bank[start + i] = up[i, dy[i] : dy[i] + height, dx[i] : dx[i] + width]
    return bank


class MaskBankCache(TensorCache):
    """Mask banks by (H, W, N, s, p, seed) under a byte budget (default 1 GiB)."""

    def __init__(self, max_bytes: int = 1 << 30):
        super().__init__(max_bytes)

    def get(self, height: int, width: int, params: RiseParams) -> torch.Tensor:
        key = (height, width, params.n_masks, params.grid_size, params.p, params.seed)
        return self.get_or_build(key, lambda: build_mask_bank(height, width, *key[2:]))


MASK_BANKS = MaskBankCache()


@register("rise", "deep", RiseParams, "RISE randomised input sampling (Petsiuk et al. 2018)")
def plan_rise(model, x: torch.Tensor, target: int, params: RiseParams, banks: MaskBankCache = MASK_BANKS) -> DeepTask:
    x = x.detach().float().cpu()
    bank = banks.get(x.shape[-2], x.shape[-1], params)
    saliency = torch.zeros(x.shape[-2:], dtype=torch.float32)

    def masked_inputs(start: int, stop: int) -> torch.Tensor:
        return x * bank[start:stop, None].float()

    def accumulate(start: int, out: ChunkOutput) -> None:
        probs = out.logits.float().softmax(-1)[:, target].cpu()
        masks = bank[start : start + len(probs)].float()
        saliency.add_(torch.einsum("n,nhw->hw", probs, masks))

    def finish() -> Attribution:
        result = saliency / (params.n_masks * params.p)
        return Attribution("rise", target, result, None, {"n_masks": float(params.n_masks)})

    return DeepTask("rise", target, [SampleStream(params.n_masks, False, masked_inputs, accumulate, sample_shape=tuple(x.shape))], finish)
