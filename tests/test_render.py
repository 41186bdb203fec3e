"""Rendering: normalisation, the colormap, overlays on the original image, PNGs and grids."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from saliency import render


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


# ------------------------------------------------------------------------- normalize_map


def test_percentile_clip_keeps_one_outlier_from_washing_out_the_map():
    ramp = np.linspace(0, 1, 10_000, dtype=np.float32).reshape(100, 100)
    ramp[0, 0] = 1000.0  # one extreme gradient pixel
    norm = render.normalize_map(ramp, mode="abs", percentile=99.0)
    assert norm.dtype == np.float32 and norm.shape == (100, 100)
    assert norm.min() >= 0 and norm.max() <= 1
    assert norm[0, 0] == 1.0  # clipped, not dominating
    # Without clipping the ramp's middle would be ~0.0005; clipped at p99 it is ~0.5.
    assert norm[50, 0] == pytest.approx(0.5, abs=0.02)
    unclipped = render.normalize_map(ramp, mode="abs", percentile=100.0)
    assert unclipped[50, 0] < 0.001


def test_positive_mode_drops_negatives_and_stretches_an_offset():
    offset = 5.0 + np.linspace(0, 1, 400).reshape(20, 20)  # RISE-like: constant + signal
    norm = render.normalize_map(offset, mode="positive")
    assert norm.min() == 0.0 and norm.max() == 1.0
    signed = np.linspace(-1, 1, 400).reshape(20, 20)
    assert np.all(render.normalize_map(signed, mode="positive")[:10] == 0)  # the negative half


@pytest.mark.parametrize("mode", render.NORMALIZE_MODES)
@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_constant_map_gives_zeros_without_nan(mode, value):
    norm = render.normalize_map(np.full((8, 9), value), mode=mode, signed=True)
    assert norm.shape == (8, 9) and norm.dtype == np.float32
    assert np.all(norm == 0)


def test_a_single_hot_pixel_is_not_lost_below_the_percentile():
    m = np.zeros((32, 32))
    m[3, 4] = 2.0
    norm = render.normalize_map(m)
    assert norm[3, 4] == 1.0 and norm.sum() == 1.0


def test_signed_maps_render_magnitude_by_default():
    m = torch.zeros(10, 10)
    m[0, 0], m[9, 9] = -4.0, 4.0
    norm = render.normalize_map(m, signed=True, percentile=100.0)
    assert norm[0, 0] == norm[9, 9] == 1.0  # strong negative evidence is as bright as positive
    unsigned = render.normalize_map(m, signed=False, percentile=100.0)
    assert unsigned[0, 0] == 0.0 and unsigned[9, 9] == 1.0


def test_nan_and_inf_do_not_poison_the_map():
    m = np.linspace(0, 1, 100).reshape(10, 10)
    m[0, 0], m[0, 1] = np.nan, np.inf
    norm = render.normalize_map(m, percentile=100.0)
    assert np.isfinite(norm).all() and norm[0, 0] == 0 and norm[9, 9] == 1.0


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        render.normalize_map(np.ones((2, 2)), mode="log")
    with pytest.raises(ValueError, match="percentile"):
        render.normalize_map(np.ones((2, 2)), percentile=10)
    with pytest.raises(ValueError, match="H, W"):
        render.normalize_map(np.ones((3, 2, 2)))


# -------------------------------------------------------------------------------- colormap


def test_colormap_hits_its_anchor_colours_exactly():
    anchors = render.INFERNO_ANCHORS
    positions = np.linspace(0, 1, len(anchors), dtype=np.float32)[None, :]
    assert np.array_equal(render.colorize(positions)[0], anchors.astype(np.uint8))
    assert tuple(render.colorize(np.array([[0.0]]))[0, 0]) == (0, 0, 4)  # inferno's black
    assert tuple(render.colorize(np.array([[1.0]]))[0, 0]) == (252, 255, 164)  # pale yellow


def test_colormap_brightness_rises_monotonically_and_clips():
    ramp = np.linspace(-0.5, 1.5, 1001)[None, :]
    rgb = render.colorize(ramp)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 1001, 3)
    inside = luminance(rgb[0, 250:751])
    assert np.all(np.diff(inside) >= -0.5)  # non-decreasing up to uint8 rounding
    assert inside[-1] - inside[0] > 200
    assert np.array_equal(rgb[0, 0], rgb[0, 250]) and np.array_equal(rgb[0, -1], rgb[0, 750])


# --------------------------------------------------------------------------------- overlay


@pytest.fixture
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, size=(90, 140, 3), dtype=np.uint8)


def test_overlay_has_the_original_image_size(photo):
    out = render.overlay(photo, torch.rand(32, 32))
    assert out.shape == photo.shape and out.dtype == np.uint8


def test_overlay_colours_the_hot_corner_and_leaves_the_cold_corner(photo):
    m = np.zeros((32, 32), dtype=np.float32)
    m[:8, :8] = 1.0  # hot top-left quarter of the model-resolution map
    out = render.overlay(photo, m, alpha=0.7).astype(int)
    diff = np.abs(out - photo.astype(int)).sum(axis=2)
    assert diff[:10, :20].mean() > 30  # top-left of the 90x140 photograph: blended in
    assert diff[-40:, -60:].max() <= 1  # bottom-right: the photograph, untouched
    assert np.array_equal(render.overlay(photo, m, alpha=0.0), photo)


def test_overlay_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="uint8"):
        render.overlay(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4)))


# ---------------------------------------------------------------------------- png and grid


def test_png_round_trip(photo):
    data = render.encode_png(photo)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(decoded, photo)


def test_grid_lays_out_captioned_tiles(photo):
    small = photo[:40, :50]
    tiles = [("gradcam · 285 Egyptian cat", photo), ("vanilla · 285", small), ("ig", photo)]
    sheet = render.grid(tiles, columns=2, padding=4, font_size=14)
    cell_w, cell_h = 140 + 8, 90 + (14 + 8) + 4
    assert sheet.dtype == np.uint8 and sheet.shape == (2 * cell_h, 2 * cell_w, 3)
    # The first tile sits below its caption strip, pixel for pixel.
    caption = 14 + 8
    assert np.array_equal(sheet[caption : caption + 90, 4 : 4 + 140], photo)
    assert (sheet[:caption, :cell_w] < 128).any()  # the caption drew some dark text
    assert np.all(sheet[cell_h:, cell_w:] == 255)  # the unused fourth cell stays white


def test_grid_shrinks_large_tiles_to_max_side(photo):
    sheet = render.grid([("a", photo)], columns=3, max_side=70, padding=0, font_size=10)
    assert sheet.shape == (45 + 10 + 0, 70, 3)  # 140x90 -> 70x45, one column used
