"""The report's and the load test's figures: matplotlib writes real PNGs, and says what to
install when it is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from saliency.reports import plots

LAYERS = ["fc", "conv3", "conv2", "conv1"]


def _check_png(path, width: int | None = None) -> tuple[int, int]:
    with Image.open(path) as picture:
        picture.verify()  # the whole file: chunks and CRCs
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        if width is not None:
            assert picture.width == width
        rgb = np.asarray(picture.convert("RGB"))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20, "something was drawn"
    return picture.size


def test_line_panels(tmp_path):
    series = {"vanilla": [0.9, 0.5, 0.2, 0.1], "gradcam": [0.8, 0.3, 0.1, 0.0]}
    panels = [plots.LinePanel("Spearman |map|", series, threshold=0.5), plots.LinePanel("SSIM", series),
              plots.LinePanel("HOG", series)]
    path = plots.line_panels(tmp_path / "sub" / "cascading.png", panels, LAYERS, title="t")
    width, height = _check_png(path, width=1040)  # two 5.2-inch columns at 100 dpi
    assert height == 680  # two rows of 3.4 inches: the empty fourth cell is hidden, not dropped


def test_image_grid_of_maps_and_a_photograph(tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    maps = [plots.normalized_map(rng.standard_normal((16, 16)), signed) for signed in (False, True)]
    assert all(m.min() >= 0 and m.max() <= 1 for m in maps)
    rows = [("vanilla", [photo, *maps]), ("ig", [None, *maps])]
    _check_png(plots.image_grid(tmp_path / "grid.png", rows, ["image", "original", "fc"]))


def test_a_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'saliency\[report\]'"):
        plots.line_panels(tmp_path / "x.png", [plots.LinePanel("a", {"m": [1.0]})], ["fc"])
    assert not (tmp_path / "x.png").exists()
