"""Image decoding and preprocessing with limits: the only code that touches user image bytes.

Decoding runs on attacker-controlled bytes, so: only the formats we mean (PNG, JPEG, WebP),
the pixel count checked from the header before any pixel is decoded (decompression bombs),
truncated files rejected, and every failure reported as InvalidArgument naming the field.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from saliency.errors import InvalidArgument, ResourceExhausted, require
from saliency.models import ModelSpec
from saliency.models.preprocess import resize_to_input

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # well under Pillow's own 89 Mpx bomb threshold


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), field: str = "image") -> np.ndarray:
    """Encoded PNG/JPEG/WebP bytes -> uint8 RGB array [H, W, 3]."""
    require(len(data) > 0, field, "image bytes are empty")
    if len(data) > limits.max_bytes:
        raise ResourceExhausted(
            f"image is {len(data)} bytes, over the limit of {limits.max_bytes}", field
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > limits.max_pixels:
                raise ResourceExhausted(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{limits.max_pixels}",
                    field,
                )
            image.load()
            rgb = image.convert("RGB")
    except UnidentifiedImageError:
        raise InvalidArgument(
            f"not a decodable image; accepted formats are {', '.join(ALLOWED_FORMATS)}", field
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ResourceExhausted(f"image rejected as a decompression bomb: {exc}", field) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidArgument(f"image could not be decoded (corrupt or truncated?): {exc}", field) from None
    return np.array(rgb, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only


def to_model_input(rgb: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    """uint8 [H, W, 3] -> normalised float32 [3, h, w] at the model's input size.

    The whole image is resized (`resize: stretch`), or scaled and its centre cut out
    (`resize: crop`): models/preprocess.py, which also says where the input lies in the image.
    """
    require(rgb.ndim == 3 and rgb.shape[2] == 3, "image", f"expected [H, W, 3] RGB, got {rgb.shape}")
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255)
    return spec.normalize(resize_to_input(pixels, spec.input_size, spec.resize))


def validate_input_tensor(x: torch.Tensor, spec: ModelSpec, field: str = "tensor") -> torch.Tensor:
    """Check a raw model-input tensor [3, H, W]: shape, dtype, finiteness. Returns float32."""
    require(x.ndim == 3, field, f"expected shape [3, H, W], got {list(x.shape)}")
    require(x.shape[0] == 3, field, f"expected 3 channels, got {x.shape[0]}")
    require(x.is_floating_point(), field, f"expected a floating-point tensor, got {x.dtype}")
    require(
        min(x.shape[1:]) >= 8 and x.shape[1] * x.shape[2] <= 4096 * 4096,
        field,
        f"spatial size {list(x.shape[1:])} is outside [8, 4096] per side",
    )
    require(bool(torch.isfinite(x).all()), field, "tensor contains NaN or Inf")
    return x.float()


def load_image_file(path: str, spec: ModelSpec, limits: ImageLimits = ImageLimits()) -> tuple[np.ndarray, torch.Tensor]:
    """Read an image file: (uint8 RGB [H, W, 3] for overlays, model input [3, h, w])."""
    with open(path, "rb") as f:
        rgb = decode_image(f.read(), limits)
    return rgb, to_model_input(rgb, spec)
