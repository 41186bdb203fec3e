"""Turning attribution maps into pictures: normalisation, a colormap, overlays, PNGs, grids.

Pure numpy + Pillow (no matplotlib) so the service can render without a plotting stack.
Maps arrive at the model's input resolution ([H, W], e.g. 224x224) and are drawn over the
ORIGINAL photograph ([H0, W0, 3]): over all of it when the model saw it whole (`resize:
stretch`), or over the box the model saw (`resize: crop`, models/preprocess.py), the rest
dimmed. `place_map` puts a map at the photograph's size the same way, NaN outside the box.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

NormalizeMode = Literal["auto", "abs", "positive"]
NORMALIZE_MODES = ("auto", "abs", "positive")
Box = tuple[int, int, int, int]  # (top, bottom, left, right) in whole pixels, bottom/right exclusive
# Overlays: pixels the model never saw (outside the crop) keep this fraction of their brightness.
OUTSIDE_DIM = 0.35

# matplotlib's 'inferno' sampled at 16 evenly spaced points (indices 0, 17, ..., 255 of its
# 256-entry table) in 0..255 units. Linear interpolation between them stays within 6/255 of the
# full table, and the luminance rises monotonically, so brighter always means more attribution.
INFERNO_ANCHORS = np.array(
    [
        (0, 0, 4),
        (12, 8, 38),
        (36, 12, 79),
        (66, 10, 104),
        (93, 18, 110),
        (120, 28, 109),
        (147, 38, 103),
        (174, 48, 92),
        (199, 62, 76),
        (221, 81, 58),
        (237, 105, 37),
        (248, 133, 15),
        (252, 165, 10),
        (250, 198, 45),
        (242, 230, 97),
        (252, 255, 164),
    ],
    dtype=np.float32,
)


def as_map_array(saliency_map: np.ndarray | torch.Tensor) -> np.ndarray:
    """A [H, W] map (numpy or torch, any float dtype) -> float64 numpy with NaN/Inf set to 0."""
    if isinstance(saliency_map, torch.Tensor):
        saliency_map = saliency_map.detach().to("cpu", torch.float64).numpy()
    m = np.asarray(saliency_map, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a [H, W] map, got shape {m.shape}")
    # A single NaN would otherwise poison the percentiles and blank the whole picture.
    return np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)


def normalize_map(
    saliency_map: np.ndarray | torch.Tensor,
    mode: NormalizeMode = "auto",
    signed: bool = False,
    percentile: float = 99.0,
) -> np.ndarray:
    """A raw map [H, W] -> float32 [H, W] in [0, 1] for display.

    mode:
      - "abs": |map| scaled by its `percentile`-th percentile; zero attribution stays at 0.
      - "positive": negatives dropped, then stretched between the (100 - percentile)-th and
        the `percentile`-th percentiles, so a map with a constant offset (RISE's expected
        score) still shows contrast.
      - "auto": "abs" for signed maps (IG, input x gradient: `MethodInfo.signed`), where
        strong negative evidence matters as much as positive, else "positive".
    Clipping at a percentile keeps a few extreme pixels (common in gradients) from washing
    out everything else. A constant map (all-zero or not) gives zeros, never NaN.
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"mode {mode!r} is not one of {NORMALIZE_MODES}")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile {percentile} is outside (50, 100]")
    m = as_map_array(saliency_map)
    if mode == "auto":
        mode = "abs" if signed else "positive"
    if mode == "abs":
        values, low = np.abs(m), 0.0
    else:
        values = np.maximum(m, 0.0)
        low = float(np.percentile(values, 100.0 - percentile))
    high = float(np.percentile(values, percentile))
    if high <= low:
        # Fewer hot pixels than the clipped tail (e.g. one bright spot): fall back to the max
        # rather than drawing nothing.
        high = float(values.max())
    if high <= low or values.min() == values.max():
        # Nothing stands out anywhere (a constant map, even a non-zero one): show nothing.
        return np.zeros(m.shape, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def colorize(norm: np.ndarray) -> np.ndarray:
    """A normalised map float [H, W] in [0, 1] -> uint8 RGB [H, W, 3] through 'inferno'.

    Values outside [0, 1] are clipped; 0 is near-black, 1 is pale yellow.
    """
    n = np.clip(np.nan_to_num(np.asarray(norm, dtype=np.float32)), 0.0, 1.0)
    if n.ndim != 2:
        raise ValueError(f"expected a [H, W] map, got shape {n.shape}")
    position = n * (len(INFERNO_ANCHORS) - 1)
    lower = np.minimum(position.astype(np.int64), len(INFERNO_ANCHORS) - 2)
    frac = (position - lower)[..., None]
    rgb = INFERNO_ANCHORS[lower] * (1.0 - frac) + INFERNO_ANCHORS[lower + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def resize_map(norm: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float [h, w] -> float32 [H, W] with Pillow's bilinear filter; size is (H, W)."""
    image = Image.fromarray(np.ascontiguousarray(norm, dtype=np.float32))  # mode "F"
    resized = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _check_box(box: Box | None, size: tuple[int, int]) -> Box:
    """`box` (None: the whole picture of `size`), checked to be a non-empty box inside it."""
    if box is None:
        return 0, size[0], 0, size[1]
    top, bottom, left, right = (int(v) for v in box)
    if not (0 <= top < bottom <= size[0] and 0 <= left < right <= size[1]):
        raise ValueError(f"box {box} is not a non-empty box inside a {size[0]}x{size[1]} picture")
    return top, bottom, left, right


def place_map(saliency_map: np.ndarray | torch.Tensor, size: tuple[int, int], box: Box | None = None) -> np.ndarray:
    """A map [h, w] -> float32 [H, W] = `size`: resized into `box` (default: all of it) with the
    overlays' filter (Pillow bilinear, `resize_map`), NaN outside the box: a map at the
    original image's size that says where the model never looked instead of inventing it."""
    values = saliency_map.detach().to("cpu", torch.float32).numpy() if isinstance(saliency_map, torch.Tensor) \
        else np.asarray(saliency_map, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected a [H, W] map, got shape {values.shape}")
    top, bottom, left, right = _check_box(box, size)
    if (top, bottom, left, right) == (0, size[0], 0, size[1]):
        return np.array(resize_map(values, size))  # writable, as the placed one
    placed = np.full(size, np.nan, dtype=np.float32)
    placed[top:bottom, left:right] = resize_map(values, (bottom - top, right - left))
    return placed


def finite_box(placed: np.ndarray) -> Box:
    """The box of a placed map's finite values (`place_map`'s box); the whole map if none is."""
    rows, cols = np.isfinite(placed).any(axis=1), np.isfinite(placed).any(axis=0)
    if not rows.any():
        return 0, placed.shape[0], 0, placed.shape[1]
    r, c = np.flatnonzero(rows), np.flatnonzero(cols)
    return int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1


def overlay(
    image_rgb: np.ndarray,
    saliency_map: np.ndarray | torch.Tensor,
    alpha: float = 0.6,
    mode: NormalizeMode = "auto",
    signed: bool = False,
    percentile: float = 99.0,
    box: Box | None = None,
) -> np.ndarray:
    """Draw a map over the photograph it explains.

    image_rgb: uint8 [H0, W0, 3], the original image; saliency_map: [H, W] at any resolution
    (it is normalised, then resized to the box with Pillow bilinear). box: (top, bottom, left,
    right), the part of the photograph the model saw (`resize: crop`); default all of it.
    Pixels outside the box keep OUTSIDE_DIM of their brightness and no colour. Returns uint8
    [H0, W0, 3]. The blend weight per pixel is `alpha * norm`, so cold regions keep the
    photograph as it was and only attributed regions take the colormap.
    """
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image_rgb.dtype} {image_rgb.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha} is outside [0, 1]")
    top, bottom, left, right = _check_box(box, image_rgb.shape[:2])
    norm = normalize_map(saliency_map, mode, signed, percentile)
    norm = np.clip(resize_map(norm, (bottom - top, right - left)), 0.0, 1.0)
    weight = (alpha * norm)[..., None]
    photo = image_rgb.astype(np.float32)
    seen = photo[top:bottom, left:right]
    blended = photo * OUTSIDE_DIM if box is not None else photo
    blended[top:bottom, left:right] = seen * (1.0 - weight) + colorize(norm) * weight
    return np.rint(blended).astype(np.uint8)


def fitted_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(H, W) scaled down, aspect kept, so that the longer side is at most `max_side`."""
    height, width = size
    if max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_within(image_rgb: np.ndarray, max_side: int) -> np.ndarray:
    """uint8 [H0, W0, 3] -> the same picture scaled down (aspect kept) so that its longer side
    is at most `max_side` (`fitted_size`); returned as is when it already fits. Overlays are
    drawn on this, so their cost is bounded whatever the size of the photograph."""
    height, width = fitted_size(image_rgb.shape[:2], max_side)
    if (height, width) == image_rgb.shape[:2]:
        return image_rgb
    return np.asarray(Image.fromarray(image_rgb).resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0))


def encode_png(rgb: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] -> PNG bytes."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _fit(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """Shorten `text` with an ellipsis until it is at most `width` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def grid(
    tiles: Sequence[tuple[str, np.ndarray]],
    columns: int,
    max_side: int | None = None,
    font_size: int = 14,
    padding: int = 4,
) -> np.ndarray:
    """Lay out captioned pictures row by row: [(title, uint8 [h, w, 3]), ...] -> uint8 RGB.

    Each cell is as large as the largest tile (after shrinking tiles whose longer side exceeds
    `max_side`, keeping aspect), with the title above it in Pillow's default font on white.
    Titles too wide for a cell are cut with an ellipsis.
    """
    if not tiles:
        raise ValueError("grid needs at least one tile")
    if columns < 1:
        raise ValueError(f"columns={columns} must be at least 1")
    images = []
    for _, rgb in tiles:
        image = Image.fromarray(rgb)
        if max_side is not None and max(image.size) > max_side:
            scale = max_side / max(image.size)
            new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(new_size, Image.Resampling.BILINEAR)
        images.append(image)
    font = ImageFont.load_default(size=font_size)
    caption = font_size + 2 * padding
    cell_w = max(image.width for image in images) + 2 * padding
    cell_h = max(image.height for image in images) + caption + padding
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, ((title, _), image) in enumerate(zip(tiles, images, strict=True)):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        draw.text(
            (x + padding, y + padding), _fit(title, draw, font, cell_w - 2 * padding),
            fill="black", font=font,
        )
        sheet.paste(image, (x + padding, y + caption))
    return np.asarray(sheet, dtype=np.uint8)
