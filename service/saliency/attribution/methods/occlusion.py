"""Occlusion (Zeiler & Fergus 2014), forward-only, with Captum's `Occlusion` semantics.

A square window of every channel is set to `baseline` (in the model's input space: 0 is the
dataset's mean colour) at each position of a grid; each position is one sample. The map at a
pixel is the mean, over the windows covering it, of F(x) - F(x with that window occluded),
F being the target logit. Window starts are k * stride for k in [0, ceil((size - window) /
stride)], as Captum's, so with stride <= window every pixel is covered and the last window in
each direction may run past the border (it is cropped). Sample 0 is the unoccluded input.

The windows form a product grid, so the reducer only stores one score per window: with R_y
[n_y, H] (R_y[k, i] = 1 when window row k covers pixel row i) and likewise R_x, the summed
score over covering windows is R_y^T S R_x for the scores S [n_y, n_x], and the number of
covering windows is the outer product of R_y's and R_x's column sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from saliency.attribution.executor import ChunkOutput, DeepPlan, SameTensor, SampleStream
from saliency.attribution.limits import DEFAULT_LIMITS, Limits
from saliency.attribution.registry import register
from saliency.attribution.types import Attribution
from saliency.errors import require
from saliency.models import LoadedModel


@dataclass(frozen=True)
class OcclusionParams:
    # side of the square window, in model-input pixels (at most the image's shorter side)
    window: int = field(default=32, metadata={"min": 1, "max": 1024})
    # step between window positions, at most `window` (so every pixel is covered)
    stride: int = field(default=16, metadata={"min": 1, "max": 1024})
    # value the window is set to, in the model's input space (0: the dataset mean colour)
    baseline: float = field(default=0.0, metadata={"min": -100, "max": 100})

    def validate(self, limits: Limits) -> None:
        """Rules across fields; each field's own bounds are in its metadata."""
        require(
            self.stride <= self.window,
            "occlusion.stride",
            f"stride {self.stride} > window {self.window} would leave pixels never occluded",
        )


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis, Captum's way: ceil((size - window) / stride) + 1 of them."""
    return [k * stride for k in range(math.ceil((size - window) / stride) + 1)]


def coverage(size: int, starts: list[int], window: int) -> torch.Tensor:
    """[len(starts), size] float64: row k is 1 where window k covers the pixel."""
    r = torch.zeros(len(starts), size, dtype=torch.float64)
    for k, s in enumerate(starts):
        r[k, s : s + window] = 1
    return r


@register(
    "occlusion",
    "deep",
    OcclusionParams,
    "Occlusion: mean logit drop over the sliding windows covering each pixel (Zeiler & Fergus 2014)",
    signed=True,
    enum="METHOD_OCCLUSION",
    oneof="occlusion",
    fallback="gradcam",
    example={"window": 8, "stride": 8},
)
def plan_occlusion(
    model: LoadedModel,
    x: torch.Tensor,
    target: int,
    params: OcclusionParams,
    limits: Limits = DEFAULT_LIMITS,
) -> DeepPlan:
    """x [C, H, W] normalised input -> a DeepPlan whose map [H, W] is the mean score drop.

    The number of windows depends on the input's size, so it is checked here, against
    `limits.max_occlusion_windows`, before anything joins a batch.
    """
    image = SameTensor(x)  # the caller's tensor: plans of one request share it, wherever it is
    x = x.detach().float().cpu()
    height, width = x.shape[-2:]
    w, s = params.window, params.stride
    require(
        w <= min(height, width),
        "occlusion.window",
        f"window {w} is larger than the {height}x{width} input",
    )
    ys, xs = window_starts(height, w, s), window_starts(width, w, s)
    n_windows = len(ys) * len(xs)
    require(
        n_windows <= limits.max_occlusion_windows,
        "occlusion.stride",
        f"{n_windows} window positions on a {height}x{width} input; at most "
        f"{limits.max_occlusion_windows} allowed: use a larger stride or window",
    )
    scores = torch.zeros(1 + n_windows, dtype=torch.float64)  # [0]: the unoccluded input

    def occluded(start: int, stop: int) -> torch.Tensor:
        batch = x.expand(stop - start, -1, -1, -1).clone()
        for row, i in enumerate(range(start, stop)):
            if i > 0:
                ky, kx = divmod(i - 1, len(xs))
                batch[row, :, ys[ky] : ys[ky] + w, xs[kx] : xs[kx] + w] = params.baseline
        return batch

    def record(start: int, out: ChunkOutput) -> None:
        scores[start : start + len(out.logits)] = out.logits[:, target].double().cpu()

    def finish() -> Attribution:
        ry, rx = coverage(height, ys, w), coverage(width, xs, w)
        occluded_sum = ry.T @ scores[1:].view(len(ys), len(xs)) @ rx  # [H, W]
        counts = torch.outer(ry.sum(0), rx.sum(0))
        attr = scores[0] - occluded_sum / counts
        return Attribution(
            "occlusion",
            target,
            attr.float(),
            None,
            {"windows": float(n_windows), "score_input": float(scores[0])},
        )

    share = ("occlusion", image, w, s, params.baseline)  # every target reads the same forwards
    stream = SampleStream(1 + n_windows, False, occluded, record, sample_shape=tuple(x.shape), share_key=share)
    # one score per window; finish's coverage matrices and three float64 [H, W] maps
    held = scores.nbytes + 8 * (len(ys) * height + len(xs) * width) + 3 * 8 * height * width
    return DeepPlan("occlusion", target, [stream], finish, held_bytes=held)
