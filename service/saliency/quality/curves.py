"""Deletion and insertion curves (Petsiuk et al. 2018, "RISE") as forward-only sample streams.

Pixels are ranked by the map's value, highest first (the evidence *for* the target; ties in
raster order). Step k of n perturbs the first round(k * H * W / n) ranked pixels:
- deletion: they become 0 in the model's input space (the dataset's mean colour, as RISE and
  occlusion here); the target's probability should fall fast, so a lower AUC is better;
- insertion: they are copied onto a blurred canvas of the image (Gaussian, sigma 5 px at 224
  px, scaled with the input); the probability should rise fast, so a higher AUC is better.
Each perturbed image is one forward-only sample of a DeepPlan, so the executor packs curves of
many maps and requests into shared model calls, exactly like RISE masks. Images are built a
chunk at a time, so memory is bounded for any step count. The score is the target's softmax
probability; the AUC is the trapezoid rule over the fraction of pixels perturbed, in [0, 1].
"""

from __future__ import annotations

import torch

from saliency.attribution.baselines import gaussian_blur
from saliency.attribution.executor import ChunkOutput, DeepPlan, SampleStream
from saliency.attribution.types import Attribution

DELETION_FILL = 0.0  # model-input space: the mean colour
BLUR_SIGMA_AT_224 = 5.0


def rank_positions(saliency_map: torch.Tensor) -> torch.Tensor:
    """[H, W] map -> [H, W] int64: each pixel's position in the descending order (0 = highest)."""
    flat = torch.nan_to_num(saliency_map.detach().float().cpu().flatten(), nan=0.0)
    order = torch.argsort(-flat, stable=True)
    positions = torch.empty_like(order)
    positions[order] = torch.arange(flat.numel())
    return positions.view(saliency_map.shape)


def pixel_counts(n_pixels: int, steps: int) -> torch.Tensor:
    """[steps + 1] pixels perturbed at each step: round(k * n_pixels / steps), k = 0..steps."""
    return torch.round(torch.arange(steps + 1, dtype=torch.float64) * n_pixels / steps).long()


def auc(curve: torch.Tensor) -> float:
    """Trapezoid area under [steps + 1] scores at evenly spaced fractions of [0, 1]."""
    c = curve.double()
    steps = len(c) - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return float((c.sum() - (c[0] + c[-1]) / 2) / steps)


def insertion_canvas(x: torch.Tensor) -> torch.Tensor:
    """The blurred start image of the insertion curve, x [C, H, W] -> [C, H, W]."""
    sigma = max(0.5, BLUR_SIGMA_AT_224 * min(x.shape[-2:]) / 224)
    return gaussian_blur(x, sigma)


def plan_perturbation_curves(
    x: torch.Tensor, saliency_map: torch.Tensor, target: int, method: str, steps: int = 16
) -> DeepPlan:
    """One DeepPlan of 2 * (steps + 1) forward-only samples for the map of `method`.

    x: the normalised model input [C, H, W]; saliency_map: [H, W] at the same resolution.
    The task's result is an Attribution of `method` for `target` whose map is the evaluated
    map, raw is the two curves [2, steps + 1] (deletion, insertion: target probabilities) and
    stats hold `deletion_auc` and `insertion_auc`.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    x = x.detach().float().cpu()
    if tuple(saliency_map.shape) != tuple(x.shape[-2:]):
        raise ValueError(f"map shape {list(saliency_map.shape)} != input {list(x.shape[-2:])}")
    positions = rank_positions(saliency_map)
    counts = pixel_counts(positions.numel(), steps)
    canvas = insertion_canvas(x)
    fill = torch.full_like(x, DELETION_FILL)
    curves = torch.zeros(2, steps + 1)

    def perturbed(start: int, stop: int, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        # mask[k] is True where the first `counts[k]` ranked pixels are: those show `second`.
        mask = positions[None] < counts[start:stop, None, None]
        return torch.where(mask[:, None], second, first)

    def deletion_inputs(start: int, stop: int) -> torch.Tensor:
        return perturbed(start, stop, x, fill)

    def insertion_inputs(start: int, stop: int) -> torch.Tensor:
        return perturbed(start, stop, canvas, x)

    def recorder(row: int):
        def record(start: int, out: ChunkOutput) -> None:
            p = out.logits.float().softmax(-1)[:, target].cpu()
            curves[row, start : start + len(p)] = p

        return record

    def finish() -> Attribution:
        return Attribution(
            method,
            target,
            saliency_map,
            curves.clone(),
            {"deletion_auc": auc(curves[0]), "insertion_auc": auc(curves[1])},
        )

    return DeepPlan(
        f"quality:{method}",
        target,
        [
            SampleStream(steps + 1, False, deletion_inputs, recorder(0), sample_shape=tuple(x.shape)),
            SampleStream(steps + 1, False, insertion_inputs, recorder(1), sample_shape=tuple(x.shape)),
        ],
        finish,
    )
