"""Image decoding rejects bad bytes with typed errors that name the field, and decodes what it
accepts as the picture a viewer shows: 16-bit scaled, EXIF orientation applied, alpha flattened."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from saliency.errors import InvalidArgument, ResourceExhausted
from saliency.imaging import (
    BACKGROUND,
    ImageLimits,
    decode_image,
    to_model_input,
    validate_input_tensor,
)
from saliency.models import get_spec


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_decode_to_rgb(fmt):
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[:, :15, 0] = 255
    out = decode_image(encode(Image.fromarray(rgb), fmt))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert out[10, 5, 0] > 200 and out[10, 25, 0] < 50


def test_grayscale_and_alpha_are_converted_to_rgb():
    assert decode_image(encode(Image.new("L", (8, 8), 128), "PNG")).shape == (8, 8, 3)
    assert decode_image(encode(Image.new("RGBA", (8, 8)), "PNG")).shape == (8, 8, 3)


def test_format_not_meant_is_rejected():
    with pytest.raises(InvalidArgument, match="image.*accepted formats"):
        decode_image(encode(Image.new("RGB", (8, 8)), "GIF"))


def test_corrupt_bytes_are_rejected():
    with pytest.raises(InvalidArgument, match="^image:"):
        decode_image(b"\x89PNG\r\n\x1a\n definitely not a png")


def test_empty_bytes_are_rejected():
    with pytest.raises(InvalidArgument, match="empty"):
        decode_image(b"")


def test_truncated_png_is_rejected():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(InvalidArgument, match="image.*truncated"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_rejected_before_decoding():
    bomb = encode(Image.new("L", (12_000, 12_000)), "PNG")  # 144 Mpx in a few hundred KB
    assert len(bomb) < 1_000_000
    with pytest.raises(ResourceExhausted, match="image.*pixels"):
        decode_image(bomb)


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ResourceExhausted, match="10000 pixels"):
        decode_image(data, ImageLimits(max_pixels=9_999))


def test_byte_limit():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ResourceExhausted, match="bytes"):
        decode_image(data, ImageLimits(max_bytes=10))


def test_preprocessing_resizes_and_normalises():
    spec = get_spec("tinycnn")
    rgb = np.full((50, 70, 3), 255, dtype=np.uint8)
    x = to_model_input(rgb, spec)
    assert x.shape == (3, *spec.input_size)
    torch.testing.assert_close(x, torch.full_like(x, (1 - 0.5) / 0.25))


@pytest.mark.parametrize(
    ("tensor", "field", "message"),
    [
        (torch.zeros(4, 32, 32), "tensor.shape", r"expected \[3, 32, 32\]"),
        (torch.zeros(32, 32), "tensor.shape", r"expected \[3, 32, 32\].*got \[32, 32\]"),
        (torch.zeros(3, 2, 2), "tensor.shape", r"expected \[3, 32, 32\]"),
        (torch.zeros(3, 64, 64), "tensor.shape", r"tinycnn.*input size.*got \[3, 64, 64\]"),
        (torch.zeros(3, 32, 32, dtype=torch.int64), "tensor", "floating"),
        (torch.full((3, 32, 32), float("nan")), "tensor", "NaN"),
        (torch.tensor([float("inf")]).expand(3, 32, 32).clone(), "tensor", "Inf"),
    ],
)
def test_bad_raw_tensors_are_rejected(tensor, field, message):
    with pytest.raises(InvalidArgument, match=f"^{field}:.*{message}") as info:
        validate_input_tensor(tensor, get_spec("tinycnn"))
    assert info.value.field == field


def test_a_raw_tensor_of_exactly_the_model_input_shape_is_accepted():
    x = torch.randn(3, 32, 32, dtype=torch.float64)
    out = validate_input_tensor(x, get_spec("tinycnn"))
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)


# ------------------------------------------------------------- what a viewer would show


def test_16_bit_greyscale_is_scaled_not_clipped_to_white():
    values = np.array([[0, 257, 32896, 65535], [128, 129, 1000, 60000]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    out = decode_image(encode(image, "PNG"))
    assert out.shape == (2, 4, 3) and out.dtype == np.uint8
    expected = np.rint(values / 257).astype(np.uint8)  # 65535 -> 255, 257 -> 1
    assert np.array_equal(out[..., 0], expected), out[..., 0]
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


def test_16_bit_photograph_decodes_like_its_8_bit_original():
    grey8 = np.array(Image.fromarray(skimage.data.chelsea()).convert("L"))
    grey16 = grey8.astype(np.uint16) * 257  # the same picture, 16 bits deep
    out8 = decode_image(encode(Image.fromarray(grey8), "PNG"))
    out16 = decode_image(encode(Image.fromarray(grey16), "PNG"))
    assert np.array_equal(out8, out16)


def test_exif_orientation_is_applied():
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20, 0] = 255  # left half red, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    for fmt in ("JPEG", "PNG", "WEBP"):
        out = decode_image(encode(Image.fromarray(stored), fmt, exif=exif.tobytes()))
        assert out.shape == (40, 20, 3), fmt  # displayed upright: taller than wide
        assert out[5, 10, 0] > 200 and out[35, 10, 0] < 50, fmt  # stored left -> displayed top


def test_fully_transparent_pixels_show_the_documented_background():
    hidden = np.zeros((8, 8, 4), dtype=np.uint8)
    hidden[..., 0] = 255  # red, but alpha 0: invisible
    out = decode_image(encode(Image.fromarray(hidden, "RGBA"), "PNG"))
    assert np.array_equal(out, np.broadcast_to(np.array(BACKGROUND, np.uint8), (8, 8, 3)))


def test_partial_alpha_is_blended_on_the_background():
    half = np.zeros((4, 4, 4), dtype=np.uint8)
    half[..., 3] = 128  # black at about half opacity
    out = decode_image(encode(Image.fromarray(half, "RGBA"), "PNG"))
    expected = np.rint(np.array(BACKGROUND) * (1 - 128 / 255))
    assert np.abs(out.astype(int) - expected).max() <= 1
    opaque = half.copy()
    opaque[..., 3] = 255
    assert decode_image(encode(Image.fromarray(opaque, "RGBA"), "PNG")).max() == 0


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_other_transparent_modes_show_the_background(mode):
    if mode == "LA":
        image = Image.fromarray(np.zeros((6, 6, 2), dtype=np.uint8), "LA")  # black, alpha 0
        data = encode(image, "PNG")
    else:
        image = Image.new("P", (6, 6), 0)
        image.putpalette([255, 0, 0] + [0, 0, 0] * 255)  # index 0 is red ...
        data = encode(image, "PNG", transparency=0)  # ... and fully transparent
    out = decode_image(data)
    assert np.array_equal(out, np.broadcast_to(np.array(BACKGROUND, np.uint8), (6, 6, 3))), mode


def test_bomb_message_quotes_the_configured_pixel_limit():
    bomb = encode(Image.new("L", (12_000, 12_000)), "PNG")  # over Pillow's own threshold too
    for limit in (1_000_000, 40_000_000):
        with pytest.raises(ResourceExhausted) as info:
            decode_image(bomb, ImageLimits(max_pixels=limit))
        assert info.value.field == "image"
        assert f"limit of {limit} pixels" in str(info.value) and "144000000" in str(info.value)
