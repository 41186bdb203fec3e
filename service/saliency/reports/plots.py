"""The sanity report's figures, drawn with matplotlib (the `report` extra).

matplotlib is imported inside the functions, only when a figure is drawn, through its
object-oriented API (`Figure` on the Agg canvas): nothing global such as pyplot's current
figure or backend is touched, so drawing is safe from any thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saliency import render

MISSING_MATPLOTLIB = "the report's plots need matplotlib: pip install 'saliency[report]'"


def new_figure(width_in: float, height_in: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # the `report` extra is not installed
        raise RuntimeError(MISSING_MATPLOTLIB) from exc
    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Any, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return path


@dataclass(frozen=True)
class LinePanel:
    """One chart: a line per series over categorical x positions, an optional dashed
    threshold line (what the report's pass/fail is judged against)."""

    title: str
    series: Mapping[str, Sequence[float]]
    threshold: float | None = None
    y_label: str = "similarity to the original map"
    y_range: tuple[float, float] = (-0.5, 1.05)


def line_panels(
    path: str | Path,
    panels: Sequence[LinePanel],
    x_labels: Sequence[str],
    x_label: str = "randomised down to layer (top first)",
    title: str = "",
    columns: int = 2,
) -> Path:
    """Panels in a grid sharing the x positions, one legend per panel -> PNG at `path`."""
    rows = -(-len(panels) // columns)
    figure = new_figure(5.2 * columns, 3.4 * rows)
    if title:
        figure.suptitle(title)
    axes = figure.subplots(rows, columns, squeeze=False)
    positions = np.arange(len(x_labels))
    for ax, panel in zip(axes.flat, panels):
        for name, values in panel.series.items():
            ax.plot(positions, values, marker="o", markersize=4, linewidth=1.6, label=name)
        if panel.threshold is not None:
            ax.axhline(panel.threshold, color="#c00000", linestyle="--", linewidth=1, label=f"pass below {panel.threshold:g}")
        ax.axhline(0.0, color="#999999", linewidth=0.8)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xticks(positions, list(x_labels), rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(x_label, fontsize=9)
        ax.set_ylabel(panel.y_label, fontsize=9)
        ax.set_ylim(*panel.y_range)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return save(figure, path)


def normalized_map(saliency_map: np.ndarray, signed: bool) -> np.ndarray:
    """A map [H, W] -> [0, 1] as the overlays show it (|map| for signed methods)."""
    return np.clip(render.normalize_map(saliency_map, "auto", signed), 0.0, 1.0)


def image_grid(
    path: str | Path,
    rows: Sequence[tuple[str, Sequence[np.ndarray | None]]],
    column_labels: Sequence[str],
    title: str = "",
    cell_in: float = 1.15,
) -> Path:
    """[(row label, [picture or None (blank), ...]), ...] under column labels -> PNG.

    A picture is uint8 RGB [H, W, 3] (shown as it is) or a map [H, W] in [0, 1] (inferno,
    one colour scale for all, with a colour bar)."""
    columns = len(column_labels)
    figure = new_figure(1.4 + cell_in * columns, 0.5 + cell_in * len(rows))
    if title:
        figure.suptitle(title, fontsize=10)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    shown = None
    for r, (label, tiles) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            tile = tiles[c] if c < len(tiles) else None
            if tile is None:
                ax.set_frame_on(False)
            elif tile.ndim == 3:
                ax.imshow(tile)
            else:
                shown = ax.imshow(tile, cmap="inferno", vmin=0.0, vmax=1.0)
            if r == 0:
                ax.set_title(column_labels[c], fontsize=7)
        axes[r][0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if shown is not None:
        figure.colorbar(shown, ax=axes, shrink=0.6, label="normalised attribution")
    return save(figure, path)
