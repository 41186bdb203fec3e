"""Numbers that compare two saliency maps [H, W]: rank correlation, top-k% overlap, SSIM and
HOG similarity (the last three as in Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Pure numpy / scipy / scikit-image; maps may be numpy arrays or torch tensors. A constant map
carries no ranking or structure, so every similarity with it is defined as 0 (uncorrelated)
rather than NaN: a map that collapses to a constant after randomisation has changed completely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from saliency.render import as_map_array

ArrayLike = np.ndarray | torch.Tensor


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped arrays (flattened); 0 if either is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    if denominator == 0 or not np.isfinite(denominator):
        return 0.0
    return float(np.clip((a * b).sum() / denominator, -1.0, 1.0))


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation of two maps [H, W] over pixels, in [-1, 1].

    Ties get average ranks (so it equals scipy.stats.spearmanr); 0 when a map is constant.
    """
    x, y = as_map_array(a), as_map_array(b)
    _check_same_shape(x, y)
    return pearson(rankdata(x.ravel()), rankdata(y.ravel()))


def top_pixels(saliency_map: ArrayLike, fraction: float) -> np.ndarray:
    """Boolean [H, W]: the ceil(fraction * H * W) highest pixels (ties broken by raster order)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is outside (0, 1]")
    m = as_map_array(saliency_map)
    k = int(np.ceil(fraction * m.size))
    order = np.argsort(-m.ravel(), kind="stable")
    chosen = np.zeros(m.size, dtype=bool)
    chosen[order[:k]] = True
    return chosen.reshape(m.shape)


def top_k_iou(a: ArrayLike, b: ArrayLike, fraction: float = 0.1) -> float:
    """Intersection over union of the top `fraction` pixels of each map, in [0, 1]."""
    x, y = top_pixels(a, fraction), top_pixels(b, fraction)
    _check_same_shape(x, y)
    union = np.logical_or(x, y).sum()
    return float(np.logical_and(x, y).sum() / union) if union else 0.0


def unit_range(saliency_map: ArrayLike) -> np.ndarray:
    """|map| scaled to [0, 1] by its maximum (zeros when the map is all zero)."""
    m = np.abs(as_map_array(saliency_map))
    high = m.max() if m.size else 0.0
    return m / high if high > 0 else np.zeros_like(m)


def ssim(a: ArrayLike, b: ArrayLike) -> float:
    """Structural similarity of |a| and |b|, each scaled to [0, 1] (data_range 1).

    The window is 7 pixels (scikit-image's default), shrunk to the map's odd size for maps
    smaller than that. 0 when either map is constant.
    """
    from skimage.metrics import structural_similarity

    x, y = unit_range(a), unit_range(b)
    _check_same_shape(x, y)
    if x.min() == x.max() or y.min() == y.max():
        return 0.0
    window = min(7, *(s if s % 2 else s - 1 for s in x.shape))
    return float(structural_similarity(x, y, data_range=1.0, win_size=max(window, 3)))


def hog_similarity(a: ArrayLike, b: ArrayLike, cells: int = 8) -> float:
    """Pearson correlation of the HOG descriptors of |a| and |b| (each scaled to [0, 1]).

    cells: HOG cells per side (each cell is H / cells pixels), 2 x 2 cells per block, 9
    orientations. 0 when either map is constant.
    """
    from skimage.feature import hog

    x, y = unit_range(a), unit_range(b)
    _check_same_shape(x, y)
    if x.min() == x.max() or y.min() == y.max():
        return 0.0
    cell = (max(x.shape[0] // cells, 2), max(x.shape[1] // cells, 2))
    hx = hog(x, orientations=9, pixels_per_cell=cell, cells_per_block=(2, 2), feature_vector=True)
    hy = hog(y, orientations=9, pixels_per_cell=cell, cells_per_block=(2, 2), feature_vector=True)
    return pearson(hx, hy)


@dataclass(frozen=True)
class Similarity:
    """How alike an original map and a randomised (or otherwise changed) map are.

    spearman_abs: rank correlation of |maps|; spearman_signed: of the maps as delivered (the
    two coincide for methods whose maps are magnitudes); ssim and hog: on |maps| in [0, 1].
    """

    spearman_abs: float
    spearman_signed: float
    ssim: float
    hog: float

    @staticmethod
    def of(original: ArrayLike, changed: ArrayLike) -> Similarity:
        x, y = as_map_array(original), as_map_array(changed)
        return Similarity(spearman(np.abs(x), np.abs(y)), spearman(x, y), ssim(x, y), hog_similarity(x, y))

    @staticmethod
    def mean(items: list[Similarity]) -> Similarity:
        """The average of several (e.g. over images)."""
        if not items:
            raise ValueError("no similarities to average")
        return Similarity(*(float(np.mean([getattr(s, f) for s in items])) for f in SIMILARITY_FIELDS))


SIMILARITY_FIELDS = ("spearman_abs", "spearman_signed", "ssim", "hog")
