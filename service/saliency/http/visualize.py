"""Vertex Explainable AI's image visualizations of a map: pixels or outlines, a polarity, clip
percentiles, a colormap and an overlay over the photograph, as a JPEG (`b64_jpeg`).

Pure numpy + Pillow, as render.py. Maps arrive placed at the picture's size (render.place_map),
NaN where the model never looked (outside a centre crop).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from saliency.errors import InvalidArgument

TYPES = ("PIXELS", "OUTLINES")
POLARITIES = ("POSITIVE", "NEGATIVE", "BOTH")
OVERLAYS = ("NONE", "ORIGINAL", "GRAYSCALE", "MASK_BLACK")
# Two-ended maps: (negative colour, positive colour); single-ended ones from dark to bright.
_TWO_ENDED = {
    "PINK_GREEN": ((255, 0, 255), (0, 255, 0)),
    "RED_GREEN": ((255, 0, 0), (0, 255, 0)),
    "PINK_WHITE_GREEN": ((255, 0, 255), (0, 255, 0)),
    "RED": ((255, 0, 0), (255, 0, 0)),
    "GREEN": ((0, 255, 0), (0, 255, 0)),
}
# matplotlib's viridis at 0, 1/4, 1/2, 3/4 and 1, interpolated linearly.
_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float32)
COLOR_MAPS = (*_TWO_ENDED, "VIRIDIS")
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Visualization:
    type: str = "OUTLINES"
    polarity: str = "POSITIVE"
    color_map: str = "PINK_GREEN"
    clip_upper: float = 99.9
    clip_lower: float = 62.0
    overlay: str = "GRAYSCALE"


# Vertex's documented recommendations: integrated gradients as outlines over a grey picture;
# XRAI as viridis pixels on their own.
IG_DEFAULT = Visualization()
XRAI_DEFAULT = Visualization("PIXELS", "POSITIVE", "VIRIDIS", 99.9, 70.0, "NONE")


def _choice(value, allowed: tuple[str, ...], field: str) -> str:
    if not isinstance(value, str) or value.upper() not in allowed:
        raise InvalidArgument(f"{value!r} is not one of {', '.join(allowed)}", field)
    return value.upper()


def _percent(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 100.0:
        raise InvalidArgument(f"{value!r} is not a percentile in [0, 100]", field)
    return float(value)


def visualization_from(value: dict, default: Visualization, field: str) -> Visualization:
    """Vertex's `Visualization` object (camelCase fields), checked; fields not given take `default`."""
    known = {"type", "polarity", "colorMap", "clipPercentUpperbound", "clipPercentLowerbound", "overlayType"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise InvalidArgument(f"is not a supported visualization field ({', '.join(sorted(known))})",
                              f"{field}.{unknown[0][:64]}")
    v = default
    kwargs = {
        "type": _choice(value["type"], TYPES, f"{field}.type") if "type" in value else v.type,
        "polarity": _choice(value["polarity"], POLARITIES, f"{field}.polarity") if "polarity" in value else v.polarity,
        "color_map": _choice(value["colorMap"], COLOR_MAPS, f"{field}.colorMap") if "colorMap" in value else v.color_map,
        "clip_upper": _percent(value["clipPercentUpperbound"], f"{field}.clipPercentUpperbound")
        if "clipPercentUpperbound" in value else v.clip_upper,
        "clip_lower": _percent(value["clipPercentLowerbound"], f"{field}.clipPercentLowerbound")
        if "clipPercentLowerbound" in value else v.clip_lower,
        "overlay": _choice(value["overlayType"], OVERLAYS, f"{field}.overlayType") if "overlayType" in value else v.overlay,
    }
    if kwargs["clip_lower"] >= kwargs["clip_upper"]:
        raise InvalidArgument(
            f"{kwargs['clip_lower']:g} is not below clipPercentUpperbound ({kwargs['clip_upper']:g})",
            f"{field}.clipPercentLowerbound",
        )
    return Visualization(**kwargs)


def _scaled(placed: np.ndarray, v: Visualization) -> np.ndarray:
    """[H, W] in [-1, 1] (BOTH) or [0, 1]: the polarity's values clipped at the percentiles."""
    values = np.nan_to_num(placed.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if v.polarity == "POSITIVE":
        magnitude = np.maximum(values, 0.0)
    elif v.polarity == "NEGATIVE":
        magnitude = np.maximum(-values, 0.0)
    else:
        magnitude = np.abs(values)
    seen = magnitude[np.isfinite(placed)] if np.isfinite(placed).any() else magnitude.ravel()
    low, high = (float(np.percentile(seen, p)) for p in (v.clip_lower, v.clip_upper))
    if high <= low:
        return np.zeros_like(values)
    scaled = np.clip((magnitude - low) / (high - low), 0.0, 1.0)
    if v.polarity == "BOTH":
        scaled = scaled * np.sign(values)
    return scaled


def _colour(scaled: np.ndarray, v: Visualization) -> np.ndarray:
    """float [H, W] -> float32 RGB [H, W, 3] in 0..255."""
    if v.color_map == "VIRIDIS":
        position = np.abs(scaled) * (len(_VIRIDIS) - 1)
        lower = np.minimum(position.astype(np.int64), len(_VIRIDIS) - 2)
        frac = (position - lower)[..., None]
        return _VIRIDIS[lower] * (1 - frac) + _VIRIDIS[lower + 1] * frac
    negative, positive = (np.array(c, dtype=np.float32) for c in _TWO_ENDED[v.color_map])
    if v.polarity == "NEGATIVE":
        positive = negative
    chosen = np.where((scaled < 0)[..., None], negative, positive)
    return chosen * np.abs(scaled)[..., None]


def _outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask (4-neighbourhood), thickened by one pixel."""
    edge = np.zeros_like(mask)
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    thick = edge.copy()
    thick[1:, :] |= edge[:-1, :]
    thick[:, 1:] |= edge[:, :-1]
    return thick


def visualize(rgb: np.ndarray, placed: np.ndarray, v: Visualization) -> np.ndarray:
    """uint8 RGB [H, W, 3] of the photograph and its placed map [H, W] -> uint8 RGB [H, W, 3]."""
    if placed.shape != rgb.shape[:2]:
        raise ValueError(f"map {placed.shape} and picture {rgb.shape[:2]} differ in size")
    scaled = _scaled(placed, v)
    weight = np.abs(scaled)
    photo = rgb.astype(np.float32)
    if v.overlay == "GRAYSCALE":
        base = np.repeat((photo @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None], 3, axis=2)
    elif v.overlay in ("ORIGINAL", "MASK_BLACK"):
        base = photo
    else:
        base = np.zeros_like(photo)
    if v.overlay == "MASK_BLACK":
        out = base * weight[..., None]
    elif v.type == "OUTLINES":
        line = _outline(weight > 0)
        out = base.copy()
        out[line] = _colour(np.where(scaled < 0, -1.0, 1.0), v)[line]
    else:
        colours = _colour(scaled, v)
        out = base * (1 - weight[..., None]) + colours * weight[..., None] if v.overlay != "NONE" else colours
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
