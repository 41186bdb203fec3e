"""XRAI (Kapishnikov et al. 2019): Integrated Gradients ranked over over-segmented regions.

1. IG from each baseline (black and white by default, as the paper), averaged, then the
   channel maximum per pixel, as PAIR's `saliency` library: a [H, W] attribution a.
2. Regions: Felzenszwalb segmentations of the image at six scales, each segment dilated
   (`segment_regions`), so regions of different scales overlap.
3. Greedy ranking (`rank_regions`): repeatedly add the region with the highest density,
   sum of a over its not-yet-covered pixels / their count, until the covered area exceeds
   `area_threshold` or no region adds at least `min_region_area` of the image; every pixel
   gets the density of the region that added it, leftover pixels their own mean.

The IG samples are ordinary executor samples (two IG tasks' streams, see
integrated_gradients.py); segmentation and ranking run in `finish`, on the executor's worker.
Result: map = density [H, W] (signed: densities may be negative); raw = the rank of the region
that added each pixel [H, W] (0 = first), as float.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
import torch
from scipy import ndimage

from saliency.attribution.executor import DeepPlan
from saliency.attribution.methods.integrated_gradients import (
    IntegratedGradientsParams,
    plan_integrated_gradients,
)
from saliency.attribution.registry import register
from saliency.attribution.requirements import INPUT_GRADIENT
from saliency.attribution.types import Attribution

BASELINES = ("black_white", "black", "zeros")
# PAIR's Felzenszwalb settings, stated for a 224 x 224 image; the minimum segment size and the
# dilation radius scale with the input's area / side so a 32 x 32 input is cut alike.
SCALES = (50, 100, 150, 250, 500, 1200)
SIGMA = 0.8
MIN_SEGMENT_224 = 150
DILATION_224 = 5
# Memory of the regions built in finish: ~12 nonzeros per pixel at 224 x 224 (chelsea,
# astronaut, coffee: 11.4-11.9), each ~52 bytes across the CSR matrix, its CSC copy and the
# coordinate arrays it is built from.
REGION_BYTES_PER_PIXEL = 12 * 52


@dataclass(frozen=True)
class XraiParams:
    n_steps: int = field(default=32, metadata={"min": 1, "max_limit": "max_ig_steps"})  # IG steps per baseline
    baseline: str = field(default="black_white", metadata={"choices": BASELINES})
    # stop once this fraction of the image is covered; the rest shares one leftover density
    area_threshold: float = field(default=1.0, metadata={"min": 0, "max": 1, "exclusive_min": True})
    # a region must add at least this fraction of the pixels (PAIR: 50 px of 224 x 224)
    min_region_area: float = field(default=0.001, metadata={"min": 0, "max": 0.5})


def segment_regions(image: np.ndarray) -> scipy.sparse.csr_matrix:
    """image float [H, W, 3] -> regions [m, H * W] (sparse 0/1): every dilated segment of
    every scale, in scale order then label order (PAIR's order, which breaks density ties)."""
    from skimage.morphology import disk
    from skimage.segmentation import felzenszwalb

    h, w = image.shape[:2]
    area = h * w / 224**2
    min_size = max(1, round(MIN_SEGMENT_224 * area))
    radius = max(1, round(DILATION_224 * math.sqrt(area)))
    footprint = disk(radius).astype(bool)
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / max(high - low, 1e-12) * 2 - 1  # PAIR segments in [-1, 1]
    rows, cols = [], []
    for scale in SCALES:
        labels = felzenszwalb(scaled, scale=scale, sigma=SIGMA, min_size=min_size, channel_axis=-1)
        # Dilate each segment inside its bounding box grown by the radius: same result as a
        # full-image dilation, at a fraction of the cost.
        for label, box in enumerate(ndimage.find_objects(labels + 1)):
            if box is None:
                continue
            y0, x0 = max(box[0].start - radius, 0), max(box[1].start - radius, 0)
            y1, x1 = min(box[0].stop + radius, h), min(box[1].stop + radius, w)
            grown = ndimage.binary_dilation(labels[y0:y1, x0:x1] == label, structure=footprint)
            ys, xs = np.nonzero(grown)
            rows.append(np.full(len(ys), len(rows)))
            cols.append((ys + y0) * w + xs + x0)
    rows_, cols_ = np.concatenate(rows), np.concatenate(cols)
    return scipy.sparse.csr_matrix(
        (np.ones(len(rows_)), (rows_, cols_)), shape=(len(rows), h * w)
    )


def rank_regions(
    attr: np.ndarray, regions: scipy.sparse.csr_matrix, area_threshold: float = 1.0, min_pixels: int = 1
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy XRAI ranking. attr [H, W], regions [m, H * W] 0/1 ->
    (density [H, W] float64, rank [H, W] int: the step that covered each pixel, steps taken).

    Region sums and counts over uncovered pixels are updated from the newly covered pixels
    only (a column slice), so the whole ranking costs O(nonzeros + steps * m), not PAIR's
    O(steps * m * H * W).
    """
    a = attr.astype(np.float64).ravel()
    by_pixel = regions.tocsc()
    sums = regions @ a
    counts = np.asarray(regions.sum(axis=1)).ravel()
    alive = np.ones(regions.shape[0], dtype=bool)
    covered = np.zeros(a.size, dtype=bool)
    density = np.zeros(a.size)
    rank = np.zeros(a.size, dtype=np.int64)
    step = 0
    while covered.mean() <= area_threshold:
        alive &= counts >= max(min_pixels, 1)
        if not alive.any():
            break
        gains = np.full(len(sums), -np.inf)
        gains[alive] = sums[alive] / counts[alive]
        best = int(np.argmax(gains))  # the first of equals, as PAIR's strict `>`
        pixels = regions.indices[regions.indptr[best] : regions.indptr[best + 1]]
        new = pixels[~covered[pixels]]
        density[new], rank[new], covered[new] = gains[best], step, True
        added = by_pixel[:, new]
        sums -= added @ a[new]
        counts -= np.asarray(added.sum(axis=1)).ravel()
        alive[best] = False
        step += 1
    rest = ~covered
    if rest.any():
        density[rest], rank[rest] = a[rest].mean(), step
        step += 1
    return density.reshape(attr.shape), rank.reshape(attr.shape), step


def xrai_baselines(model, x: torch.Tensor, baseline: str) -> list[torch.Tensor]:
    """The IG baselines [C, H, W] in the model's input space."""
    black = model.spec.normalize(torch.zeros_like(x))
    if baseline == "black_white":
        return [black, model.spec.normalize(torch.ones_like(x))]
    return [black] if baseline == "black" else [torch.zeros_like(x)]


@register(
    "xrai", "deep", XraiParams, "XRAI region attribution over IG (Kapishnikov et al. 2019)", signed=True,
    supports=INPUT_GRADIENT, enum="METHOD_XRAI", oneof="xrai",
    fallback="gradcam",  # coarse regions, as XRAI's
    example={"n_steps": 4},
)
def plan_xrai(model, x: torch.Tensor, target: int, params: XraiParams) -> DeepPlan:
    """x [C, H, W] normalised input -> a DeepPlan whose map is the region density [H, W]."""
    x = x.detach().float().cpu()
    ig_tasks = [
        plan_integrated_gradients(
            model, x, target, IntegratedGradientsParams(n_steps=params.n_steps, baseline="custom", custom_baseline=b)
        )
        for b in xrai_baselines(model, x, params.baseline)
    ]
    pixels = model.spec.denormalize(x).permute(1, 2, 0).numpy()  # [H, W, 3] for segmentation

    def finish() -> Attribution:
        igs = [task.finish() for task in ig_tasks]
        attr = torch.stack([ig.raw for ig in igs]).mean(0).amax(0)  # [H, W]
        started = time.perf_counter()
        regions = segment_regions(pixels)
        segmented = time.perf_counter()
        min_pixels = math.ceil(params.min_region_area * attr.numel())
        density, rank, steps = rank_regions(attr.numpy(), regions, params.area_threshold, min_pixels)
        ranked = time.perf_counter()
        return Attribution(
            "xrai",
            target,
            torch.from_numpy(density).float(),
            torch.from_numpy(rank).float(),
            {
                "regions_added": float(steps),
                "regions_total": float(regions.shape[0]),
                "ig_completeness_error": max(ig.stats["completeness_error"] for ig in igs),
                "n_steps": float(params.n_steps),
                "segmentation_ms": (segmented - started) * 1000,
                "ranking_ms": (ranked - segmented) * 1000,
            },
        )

    height, width = x.shape[-2:]
    # The IG tasks' state, the pixels, the regions, and finish's float64 maps.
    held = sum(t.memory_bytes for t in ig_tasks) + pixels.nbytes + (REGION_BYTES_PER_PIXEL + 3 * 8) * height * width
    return DeepPlan("xrai", target, [s for task in ig_tasks for s in task.streams], finish, held_bytes=held)
