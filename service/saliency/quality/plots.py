"""Small Pillow charts for the sanity report (matplotlib is not a runtime dependency): a line
chart of similarity against randomised layer, and a labelled grid of maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from saliency import render

# Tableau 10: distinct, colour-blind-friendly enough for six lines.
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def line_chart(
    series: Mapping[str, Sequence[float]],
    x_labels: Sequence[str],
    title: str = "",
    y_range: tuple[float, float] = (-0.5, 1.0),
    threshold: float | None = None,
    size: tuple[int, int] = (560, 300),
) -> np.ndarray:
    """One line per series over categorical x positions -> uint8 RGB [H, W, 3].

    A dashed horizontal line marks `threshold`; the legend sits right of the plot.
    """
    width, height = size
    font = ImageFont.load_default(size=11)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    legend_w = 150
    left, right, top, bottom = 40, width - legend_w, 24, height - 30
    low, high = y_range

    def y_of(value: float) -> float:
        v = min(max(value, low), high)
        return bottom - (v - low) / (high - low) * (bottom - top)

    def x_of(i: int) -> float:
        return left + (i + 0.5) * (right - left) / max(len(x_labels), 1)

    if title:
        draw.text((left, 4), title, fill="black", font=font)
    for tick in np.arange(np.ceil(low * 4) / 4, high + 1e-9, 0.25):
        y = y_of(float(tick))
        draw.line([(left, y), (right, y)], fill=(225, 225, 225) if tick else (150, 150, 150))
        draw.text((4, y - 6), f"{tick:.2f}", fill="black", font=font)
    if threshold is not None:
        y = y_of(threshold)
        for x in range(left, right, 8):
            draw.line([(x, y), (min(x + 4, right), y)], fill=(200, 0, 0))
    draw.rectangle([left, top, right, bottom], outline="black")
    for i, label in enumerate(x_labels):
        text_w = draw.textlength(label, font=font)
        draw.text((x_of(i) - text_w / 2, bottom + 6), label, fill="black", font=font)
    for k, (name, values) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        points = [(x_of(i), y_of(v)) for i, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ly = top + 4 + 16 * k
        draw.line([(right + 10, ly + 6), (right + 30, ly + 6)], fill=colour, width=3)
        draw.text((right + 36, ly), name, fill="black", font=font)
    return np.asarray(image, dtype=np.uint8)


def map_tile(saliency_map: np.ndarray, signed: bool, side: int) -> np.ndarray:
    """A map [H, W] -> a side x side inferno heatmap (|map| for signed methods)."""
    norm = render.normalize_map(saliency_map, "auto", signed)
    return render.colorize(np.clip(render.resize_map(norm, (side, side)), 0.0, 1.0))


def labelled_grid(
    rows: Sequence[tuple[str, Sequence[np.ndarray | None]]],
    column_labels: Sequence[str],
    side: int = 72,
    label_w: int = 110,
) -> np.ndarray:
    """[(row label, [tile uint8 [side, side, 3] or None (blank), ...]), ...] with column
    labels on top -> uint8 RGB."""
    font = ImageFont.load_default(size=11)
    pad, head = 3, 16
    columns = len(column_labels)
    sheet = Image.new("RGB", (label_w + columns * (side + pad), head + len(rows) * (side + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels):
        draw.text((label_w + c * (side + pad) + 2, 2), label, fill="black", font=font)
    for r, (label, tiles) in enumerate(rows):
        y = head + r * (side + pad)
        draw.text((4, y + side // 2 - 6), label, fill="black", font=font)
        for c, tile in enumerate(tiles):
            if tile is not None:
                picture = Image.fromarray(tile)
                if picture.size != (side, side):
                    picture = picture.resize((side, side), Image.Resampling.BILINEAR)
                sheet.paste(picture, (label_w + c * (side + pad), y))
    return np.asarray(sheet, dtype=np.uint8)


def save_png(path, rgb: np.ndarray, colors: int | None = None) -> None:
    """Write uint8 RGB [H, W, 3] as PNG; with `colors`, palette-quantised (much smaller for
    noisy heatmaps, which compress badly as RGB)."""
    picture = Image.fromarray(rgb)
    if colors is not None:
        picture = picture.quantize(colors=colors)
    picture.save(path, format="PNG", optimize=True)
