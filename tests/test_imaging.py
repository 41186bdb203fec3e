"""Image decoding rejects bad bytes with typed errors that name the field."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from saliency.errors import InvalidArgument, ResourceExhausted
from saliency.imaging import ImageLimits, decode_image, to_model_input, validate_input_tensor
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
    ("tensor", "message"),
    [
        (torch.zeros(4, 32, 32), "3 channels"),
        (torch.zeros(32, 32), "shape"),
        (torch.zeros(3, 32, 32, dtype=torch.int64), "floating"),
        (torch.full((3, 32, 32), float("nan")), "NaN"),
        (torch.tensor([float("inf")]).expand(3, 32, 32).clone(), "Inf"),
        (torch.zeros(3, 2, 2), "spatial size"),
    ],
)
def test_bad_raw_tensors_are_rejected(tensor, message):
    with pytest.raises(InvalidArgument, match=f"tensor:.*{message}"):
        validate_input_tensor(tensor, get_spec("tinycnn"))
