"""Reference (baseline) image sets for GradientSHAP / Expected Gradients.

Built-in sets are stacks of pixel images, uint8 [R, 3, H, W], made at the size of the input
being explained and normalised with the model's spec only when a chunk needs them, so the
cache holds a quarter of the float bytes:
- photos: the photographs bundled with scikit-image (`PHOTOS`), centre-cropped to the input's
  aspect ratio and resized like a request image (bilinear, antialiased); greyscale ones are
  repeated over the three channels. Expected Gradients (Erion et al. 2021) draws its
  references from real data; these stand in for a training set.
- uniform: `UNIFORM_COUNT` images of independent uniform pixels, fixed (generator seed 0) so
  the reference set is the same for every request; the request's seed picks the draws.
- black_white: a black and a white image.
Sets are cached per (model normalisation, size) in an LRU with a byte budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from saliency.attribution.cache import TensorCache
from saliency.models import ModelSpec

# skimage.data loaders of photographs shipped inside scikit-image (no download needed).
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "stereo_motorcycle", "camera", "coins", "moon", "brick", "grass", "gravel", "clock",
    "page",
)
UNIFORM_COUNT = 16
BUILTIN_COUNTS = {"photos": len(PHOTOS), "uniform": UNIFORM_COUNT, "black_white": 2}


def _photo(name: str) -> np.ndarray:
    """The bundled photograph `name` as uint8 [H, W, 3]."""
    from skimage import data

    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _fit(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 [H0, W0, 3] -> uint8 [3, height, width]: centre crop to the aspect, then resize."""
    h0, w0 = image.shape[:2]
    if h0 * width > w0 * height:  # too tall
        crop = max(1, round(w0 * height / width))
        top = (h0 - crop) // 2
        image = image[top : top + crop]
    else:
        crop = max(1, round(h0 * width / height))
        left = (w0 - crop) // 2
        image = image[:, left : left + crop]
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    resized = F.interpolate(pixels[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def build_pixels(kind: str, height: int, width: int) -> torch.Tensor:
    """uint8 [R, 3, height, width] pixel images of the built-in set `kind`."""
    if kind == "photos":
        return torch.stack([_fit(_photo(name), height, width) for name in PHOTOS])
    if kind == "uniform":
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (UNIFORM_COUNT, 3, height, width), generator=g, dtype=torch.uint8)
    if kind == "black_white":
        return torch.stack([torch.zeros(3, height, width), torch.full((3, height, width), 255.0)]).to(torch.uint8)
    raise ValueError(f"no built-in reference set {kind!r}")


class ReferenceCache(TensorCache):
    """Built-in pixel sets by (kind, height, width) under a byte budget (default 256 MB)."""

    def __init__(self, max_bytes: int = 256 << 20):
        super().__init__(max_bytes)

    def get(self, kind: str, height: int, width: int) -> torch.Tensor:
        return self.get_or_build((kind, height, width), lambda: build_pixels(kind, height, width))


REFERENCES = ReferenceCache()


class ReferenceSet:
    """R reference inputs in the model's input space, fetched by index.

    Built-in sets are loaded on first use (on the executor's worker, not in `plan`);
    `custom` is the caller's stack of normalised inputs [R, C, H, W].
    """

    def __init__(
        self,
        kind: str,
        spec: ModelSpec,
        shape: tuple[int, int, int],
        custom: torch.Tensor | None = None,
        cache: ReferenceCache = REFERENCES,
    ):
        self.kind, self.spec, self.shape, self.cache = kind, spec, shape, cache
        self.custom = None if custom is None else custom.detach().float().cpu()
        self.count = len(self.custom) if kind == "custom" else BUILTIN_COUNTS[kind]

    def get(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """[k] indices -> [k, C, H, W] float32 references, normalised like the model's input."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.kind == "custom":
            return self.custom[index]
        pixels = self.cache.get(self.kind, self.shape[-2], self.shape[-1])[index]
        return self.spec.normalize(pixels.float() / 255)  # [C, 1, 1] statistics broadcast

    def all(self) -> torch.Tensor:
        """Every reference, [R, C, H, W]."""
        return self.get(range(self.count))
