"""Superpixels for the coalition methods (KernelSHAP, LIME): segments and masked images.

A *coalition* z in {0, 1}^M says which of the image's M superpixels are kept; a segment that is
off is replaced by the same pixels of a baseline image. Segments are SLIC (Achanta et al. 2012,
scikit-image) computed on the de-normalised image, labels 0..M-1 with no gaps (SLIC may return
fewer segments than asked for, and with connectivity enforcement skip labels).

SLIC costs as much as a model call, so it never runs in `plan` (called on the service's
event loop): `LazySegmentation` computes it on the worker thread when the first samples are
generated, and `SegmentCache` shares the result between the targets and methods of a request
(keyed by the image's bytes and the SLIC parameters).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from skimage.segmentation import slic

from saliency.attribution.baselines import gaussian_blur
from saliency.attribution.cache import TensorCache
from saliency.models import ModelSpec

# What an "off" segment becomes, in the model's input space:
#   zeros        0, the dataset's mean colour after normalisation (as RISE and occlusion)
#   mean         the image's own mean colour per channel
#   segment_mean each segment's own mean colour (the lime package's default for images)
#   blur         the image blurred with a Gaussian of `blur_sigma` pixels
BASELINES = ("zeros", "mean", "segment_mean", "blur")
MAX_SEGMENTS = 500  # the surrogate fits solve M x M systems: bounded cost per request


@dataclass(frozen=True)
class SegmentationParams:
    """The parameters every superpixel method shares (its own come after them)."""

    method: ClassVar[str] = ""
    # SLIC's target number of superpixels (it may return fewer)
    n_segments: int = field(default=50, metadata={"min": 2, "max": MAX_SEGMENTS})
    # SLIC's balance of colour against space: higher gives squarer segments
    compactness: float = field(
        default=10.0, metadata={"min": 0.01, "max": 1000, "note": "SLIC's colour/space balance; 10 suits photographs"}
    )
    # what an "off" segment becomes (BASELINES above)
    baseline: str = field(default="zeros", metadata={"choices": BASELINES})
    # Gaussian sigma in pixels, for baseline "blur"
    blur_sigma: float = field(default=10.0, metadata={"min": 0.1, "max": 100, "note": "pixels"})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**63 - 1})

    @property
    def segmentation_key(self) -> tuple:
        """What the masked images depend on besides the input and the coalitions."""
        return self.n_segments, self.compactness, self.baseline, self.blur_sigma



def slic_segments(pixels: torch.Tensor, n_segments: int, compactness: float) -> torch.Tensor:
    """pixels [C, H, W] in [0, 1] -> labels [H, W] int32 in 0..M-1, every label present."""
    image = pixels.detach().permute(1, 2, 0).double().cpu().numpy()
    labels = slic(image, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)
    _, consecutive = np.unique(labels, return_inverse=True)
    return torch.from_numpy(consecutive.reshape(labels.shape).astype(np.int32))


class SegmentCache(TensorCache):
    """Segmentations keyed by (image bytes, normalisation, SLIC parameters), under a byte
    budget (int32 labels: 200 kB at 224x224)."""

    def __init__(self, max_bytes: int = 32 << 20):
        super().__init__(max_bytes)

    def get(self, spec: ModelSpec, x: torch.Tensor, n_segments: int, compactness: float) -> torch.Tensor:
        """x [C, H, W] normalised -> labels [H, W] int32 (shared: do not modify)."""
        digest = hashlib.blake2b(x.contiguous().numpy().tobytes(), digest_size=16).hexdigest()
        key = (digest, tuple(x.shape), spec.mean, spec.std, n_segments, compactness)
        return self.get_or_build(key, lambda: slic_segments(spec.denormalize(x), n_segments, compactness))


SEGMENTS = SegmentCache()


def baseline_image(x: torch.Tensor, labels: torch.Tensor, kind: str, blur_sigma: float) -> torch.Tensor:
    """The image an all-off coalition produces: [C, H, W] in the model's input space."""
    if kind == "zeros":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(1, 2), keepdim=True).expand_as(x).clone()
    if kind == "segment_mean":
        m = int(labels.max()) + 1
        flat = labels.flatten()
        sums = torch.zeros(x.shape[0], m, dtype=torch.float64).index_add_(1, flat, x.flatten(1).double())
        counts = torch.bincount(flat, minlength=m).double()
        return (sums / counts)[:, flat].view_as(x).to(x.dtype)
    if kind == "blur":
        return gaussian_blur(x, blur_sigma)
    raise ValueError(f"unknown baseline {kind!r}")


def masked_images(x: torch.Tensor, baseline: torch.Tensor, labels: torch.Tensor, coalitions: torch.Tensor) -> torch.Tensor:
    """coalitions [n, M] bool -> [n, C, H, W]: x where the pixel's segment is on, else baseline."""
    keep = coalitions[:, labels]  # [n, H, W]
    return torch.where(keep[:, None], x, baseline)


def segment_map(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """values [M] -> [H, W] float32: every pixel gets its segment's value."""
    return values.float()[labels]


class LazySegmentation:
    """One request's segments and baseline, computed on first use (the worker thread)."""

    def __init__(self, spec: ModelSpec, x: torch.Tensor, params: Any, cache: SegmentCache = SEGMENTS):
        self._spec, self._x, self._params, self._cache = spec, x, params, cache
        self._labels: torch.Tensor | None = None
        self._baseline: torch.Tensor | None = None

    def _build(self) -> None:
        p = self._params
        self._labels = self._cache.get(self._spec, self._x, p.n_segments, p.compactness)
        self._baseline = baseline_image(self._x, self._labels, p.baseline, p.blur_sigma)

    @property
    def labels(self) -> torch.Tensor:
        """[H, W] int32 segment of each pixel."""
        if self._labels is None:
            self._build()
        return self._labels

    @property
    def baseline(self) -> torch.Tensor:
        """[C, H, W] the all-off image."""
        if self._baseline is None:
            self._build()
        return self._baseline

    @property
    def n_segments(self) -> int:
        return int(self.labels.max()) + 1

    def images(self, coalitions: torch.Tensor) -> torch.Tensor:
        """coalitions [n, M] bool -> masked images [n, C, H, W]."""
        return masked_images(self._x, self.baseline, self.labels, coalitions)
