"""RISE (Petsiuk et al. 2018): randomised input sampling, forward-only.

saliency = sum_i P(target | x * M_i) * M_i / (N * p). Masks are s x s Bernoulli(p) grids,
bilinearly upsampled to (s + 1) cells and randomly shifted by up to one cell, as in the paper.
Masked-out pixels become 0 in the model's input space (the dataset mean colour after
normalisation).

Masks are made a chunk at a time (`MaskSampler`), never as a bank: a bank of N=8192 masks at
224x224 is 0.8 GB in float16, and plan() runs on the request path, so memory and plan time no
longer grow with N. Masks are float16, as the bank they replace, and equal to its rows for the
same seed (tests keep the bank's code as the reference). Making a mask costs a small fraction
of the forward it feeds, while a whole bank cost every first request of a (size, N, s, p, seed)
its time and hundreds of MiB (docs/engine.md): a cache of banks does not pay for itself, so
there is none.

The map is a mean of N sample maps P_i M_i / p: `map_error` is its standard error (a running
sum of squares per pixel), relative to the map less its spatial mean: the map's level is the
mean score, which no ranking or display uses and which would hide the noise (docs/engine.md).
With `max_map_error` > 0, n_masks is the cap and the stream stops at the first checkpoint (a
multiple of BLOCK, so every mask is what an untargeted request for that many gets) where the
estimate is under the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from saliency.attribution.executor import ChunkOutput, DeepPlan, SameTensor, Samples, SampleStream
from saliency.attribution.limits import Limits
from saliency.attribution.map_error import (
    Checkpoints,
    max_map_error_field,
    mean_error,
    require_pilot,
)
from saliency.attribution.registry import register
from saliency.attribution.types import Attribution


@dataclass(frozen=True)
class RiseParams:
    n_masks: int = field(default=2000, metadata={"min": 1, "max_limit": "max_rise_masks"})
    # s: cells per side of the low-resolution mask
    grid_size: int = field(default=7, metadata={"min": 2, "max": 64})
    # probability that a cell is kept, in the open interval (0, 1)
    p: float = field(default=0.5, metadata={"min": 0, "max": 1, "exclusive_min": True, "exclusive_max": True})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**63 - 1})
    # estimated relative L2 error of the map (less its mean) to stop at; 0: exactly n_masks
    max_map_error: float = max_map_error_field()

    def validate(self, limits: Limits) -> None:
        """Rules across fields; each field's own bounds are in its metadata."""
        require_pilot("rise", "n_masks", self.n_masks, self.max_map_error, PILOT_MASKS)


BLOCK = 128  # masks per generator call: part of the draw order, so never to be changed
# The first stage of error-targeted RISE. Stages end on whole blocks: the last block's draws
# depend on N when it is partial, so only there is a mask the same for every N.
PILOT_MASKS = 2 * BLOCK


class MaskSampler:
    """The masks of (H, W, N, s, p, seed), made on demand for any index range [start, stop);
    row i equals row i of the whole bank the service used to build (its code is the reference
    in tests/test_deep_methods.py).

    The draws come from one generator in blocks of BLOCK masks (grids, then row shifts, then
    column shifts), so mask i depends on every earlier block's draws. Walking the generator
    costs only the low-resolution draws (N * s^2 numbers); its state at each block start is kept
    (5 kB per block), so any block can be drawn again and only the requested rows upsampled.
    Not thread-safe: one task's chunks are made by one executor thread.
    """

    def __init__(self, height: int, width: int, n: int, s: int, p: float, seed: int):
        self.height, self.width, self.n, self.s, self.p = height, width, n, s, p
        self.cell_h, self.cell_w = math.ceil(height / s), math.ceil(width / s)
        self._walker = torch.Generator().manual_seed(seed)
        self._states: list[torch.Tensor] = []  # the generator's state at the start of block b
        self._last: tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    @property
    def state_bytes(self) -> int:
        """Bytes it holds once every block was drawn: the states and one block's draws."""
        blocks = math.ceil(self.n / BLOCK)
        state = self._walker.get_state().nbytes
        return blocks * state + BLOCK * (4 * self.s * self.s + 16)

    def _draw(self, generator: torch.Generator, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block `block`'s grids [m, 1, s, s] (float 0/1), row and column shifts [m]."""
        m = min(BLOCK, self.n - block * BLOCK)
        grids = (torch.rand(m, 1, self.s, self.s, generator=generator) < self.p).float()
        dy = torch.randint(0, self.cell_h, (m,), generator=generator)
        dx = torch.randint(0, self.cell_w, (m,), generator=generator)
        return grids, dy, dx

    def _block(self, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._last is not None and self._last[0] == block:
            return self._last[1]
        if block < len(self._states):
            generator = torch.Generator()
            generator.set_state(self._states[block])
            draws = self._draw(generator, block)
        else:
            while len(self._states) <= block:  # chunks come in order: usually one step
                self._states.append(self._walker.get_state())
                draws = self._draw(self._walker, len(self._states) - 1)
        self._last = block, draws
        return draws

    def masks(self, start: int, stop: int) -> torch.Tensor:
        """Masks [stop - start, H, W] float16 in [0, 1] for indices [start, stop)."""
        h, w = self.height, self.width
        up_size = ((self.s + 1) * self.cell_h, (self.s + 1) * self.cell_w)
        out = torch.empty(stop - start, h, w, dtype=torch.float16)
        for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            grids, dy, dx = self._block(block)
            first, last = max(start, block * BLOCK) - block * BLOCK, min(stop, (block + 1) * BLOCK) - block * BLOCK
            up = F.interpolate(grids[first:last], size=up_size, mode="bilinear", align_corners=False)[:, 0]
            for k, i in enumerate(range(first, last)):
                out[block * BLOCK + i - start] = up[k, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        return out

@register(
    "rise", "deep", RiseParams, "RISE randomised input sampling (Petsiuk et al. 2018)",
    enum="METHOD_RISE", oneof="rise", fallback="gradcam", samples=lambda p: p.n_masks,
    example={"n_masks": 30, "grid_size": 4},
)
def plan_rise(model, x: torch.Tensor, target: int, params: RiseParams) -> DeepPlan:
    """x [C, H, W] normalised input -> a DeepPlan whose map [H, W] is the RISE saliency."""
    image = SameTensor(x)  # the caller's tensor: plans of one request share it, wherever it is
    x = x.detach().float().cpu()
    height, width = x.shape[-2:]
    sampler = MaskSampler(height, width, params.n_masks, params.grid_size, params.p, params.seed)
    stages = Checkpoints(params.n_masks, params.max_map_error, PILOT_MASKS, BLOCK)
    # Reduced where the model runs: on a GPU the per-target sums then cost next to nothing
    # beside the shared call (docs/engine.md, "Shared forwards").
    saliency = torch.zeros(height, width, dtype=torch.float32, device=model.device)
    # For map_error: sum of (P_i M_i)^2 per pixel, and of the sample maps' spatial means and
    # their squares (float64: squares of sums over thousands of masks).
    saliency_sq = torch.zeros(height, width, dtype=torch.float64, device=model.device)
    levels = torch.zeros(2, dtype=torch.float64, device=model.device)
    # Masks travel to the model's device in float16 and meet the input there: a sixth of the
    # bytes of a masked float32 input, and the same products (one multiply, rounded alike).
    # They are made float32 there once per slice, for every target's reducer.
    x_on_device = x.to(model.device)
    used = [params.n_masks]
    errors: list[float] = []

    def masked_inputs(start: int, stop: int) -> Samples:
        masks = sampler.masks(start, stop).to(model.device).float()  # [n, H, W], to every target's reducer
        return Samples(x_on_device * masks[:, None], masks)

    def map_error(n: int) -> float:
        p = params.p
        level, level_sq = (float(v) for v in levels.cpu())
        return mean_error(saliency / p, saliency_sq / p**2, n, (level / p, level_sq / p**2))

    def accumulate(start: int, out: ChunkOutput) -> None:
        probs = out.logits.float().softmax(-1)[:, target]
        saliency.add_(torch.einsum("n,nhw->hw", probs, out.side))
        saliency_sq.add_(torch.einsum("n,nhw->hw", probs.square(), out.side.square()))
        means = probs * out.side.mean((1, 2))
        levels.add_(torch.stack([means.sum(), means.square().sum()]))
        stop = start + len(probs)
        if params.max_map_error > 0 and stop in stages:
            errors.append(map_error(stop))
            if errors[-1] <= params.max_map_error or stop == params.n_masks:
                used[0] = stream.n_samples = stop  # no further mask

    def finish() -> Attribution:
        n = used[0]
        result = saliency.cpu() / (n * params.p)
        stats = {"n_masks": float(n), "map_error": errors[-1] if errors else map_error(n)}
        if params.max_map_error > 0:
            stats.update(n_masks_cap=float(params.n_masks), max_map_error=params.max_map_error)
        return Attribution("rise", target, result, None, stats)

    # The masks depend on the input's size and the parameters, never on the target: the other
    # targets' streams of this request share every masked forward (cut at the same checkpoints).
    share = ("rise", image, params.n_masks, params.grid_size, params.p, params.seed, stages.points)
    stream = SampleStream(
        params.n_masks, False, masked_inputs, accumulate, sample_shape=tuple(x.shape), share_key=share,
        checkpoint=stages.next if params.max_map_error > 0 else None,
    )
    # the map and its sums of squares, the generator's states, and the input's copy on an accelerator
    held = (
        saliency.nbytes + saliency_sq.nbytes + sampler.state_bytes + (0 if x_on_device is x else x_on_device.nbytes)
    )
    return DeepPlan("rise", target, [stream], finish, held_bytes=held)
