"""Image decoding and preprocessing with limits: the only code that touches user image bytes.

Decoding runs on attacker-controlled bytes, so: only the formats we mean (PNG, JPEG, WebP),
the pixel count checked from the header before any pixel is decoded (decompression bombs; the
message quotes the configured limit), truncated files rejected, and every failure reported as
InvalidArgument naming the field.

What is explained is the picture a viewer shows, not the raw samples:
- the EXIF orientation tag is applied (a phone photo stored sideways is explained upright);
- 16-bit greyscale (Pillow modes I;16* and I) is scaled to 8 bits (v / 257, rounded), not
  clipped to white;
- transparency (RGBA, LA, PA, RGBa, and P / L / RGB with a tRNS colour) is composited on an
  opaque white BACKGROUND, as a browser shows it on a white page, so colours hidden under
  alpha 0 never reach the model.
Raw tensors skip all of this and must have exactly the model's input shape [3, h, w].
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from saliency.errors import InvalidArgument, ResourceExhausted, require
from saliency.models import ModelSpec
from saliency.models.preprocess import resize_to_input

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
BACKGROUND = (255, 255, 255)  # white: what transparent pixels are composited on (see above)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # well under Pillow's own 89 Mpx bomb threshold


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), field: str = "image") -> np.ndarray:
    """Encoded PNG/JPEG/WebP bytes -> uint8 RGB array [H, W, 3], as a viewer shows the picture:
    EXIF orientation applied, 16-bit scaled to 8, alpha composited on BACKGROUND."""
    require(len(data) > 0, field, "image bytes are empty")
    if len(data) > limits.max_bytes:
        raise ResourceExhausted(
            f"image is {len(data)} bytes, over the limit of {limits.max_bytes}", field
        )
    try:
        with warnings.catch_warnings():
            # Our own check below is the limit; Pillow's warning (89 Mpx) would override a
            # configured limit above it. Its hard error (2x that) is reported as our limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        width, height = image.size  # from the header: nothing decoded yet
        if width * height > limits.max_pixels:
            raise ResourceExhausted(
                f"image is {width}x{height} = {width * height} pixels, over the limit of "
                f"{limits.max_pixels} pixels",
                field,
            )
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        rgb = _to_rgb(image)
    except UnidentifiedImageError:
        raise InvalidArgument(
            f"not a decodable image; accepted formats are {', '.join(ALLOWED_FORMATS)}", field
        ) from None
    except Image.DecompressionBombError as exc:
        size = re.search(r"\((\d+) pixels\)", str(exc))
        raise ResourceExhausted(
            f"image is {size.group(1) + ' pixels' if size else 'too large'}, over the limit of "
            f"{limits.max_pixels} pixels (a decompression bomb, rejected before decoding)",
            field,
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidArgument(f"image could not be decoded (corrupt or truncated?): {exc}", field) from None
    return rgb


def _to_rgb(image: Image.Image) -> np.ndarray:
    """A loaded image of any mode -> a writable uint8 [H, W, 3] array (see the module docstring)."""
    if image.mode in _WIDE_GREY_MODES:
        # Pillow's convert("L") clips I;16 values at 255 (all white): scale 0..65535 -> 0..255.
        wide = np.asarray(image)
        grey = (np.clip(wide, 0, 65535).astype(np.uint32) * 255 + 32767) // 65535
        alpha = None
        transparent = image.info.get("transparency")
        if isinstance(transparent, int):  # a tRNS grey level marks transparent pixels
            alpha = Image.fromarray(np.where(wide == transparent, 0, 255).astype(np.uint8), "L")
        image = Image.fromarray(grey.astype(np.uint8), "L")
        if alpha is not None:
            image.putalpha(alpha)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")  # also resolves P / L / RGB tRNS colours to alpha
        flat = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        flat.alpha_composite(rgba)
        image = flat
    return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy: torch warns on read-only


def to_model_input(rgb: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    """uint8 [H, W, 3] -> normalised float32 [3, h, w] at the model's input size.

    The whole image is resized (`resize: stretch`), or scaled and its centre cut out
    (`resize: crop`): models/preprocess.py, which also says where the input lies in the image.
    """
    require(rgb.ndim == 3 and rgb.shape[2] == 3, "image", f"expected [H, W, 3] RGB, got {rgb.shape}")
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255)
    return spec.normalize(resize_to_input(pixels, spec.input_size, spec.resize))


def validate_input_tensor(x: torch.Tensor, spec: ModelSpec, field: str = "tensor") -> torch.Tensor:
    """Check a raw model-input tensor: exactly [3, *spec.input_size], floating point, finite.
    Returns float32.

    Only the model's own input size is accepted: a larger tensor would be computed at its size,
    and every method's memory grows with it (admission sizes requests by the model's input).
    """
    expected = [3, *spec.input_size]
    require(
        list(x.shape) == expected,
        f"{field}.shape",
        f"expected {expected} (model {spec.name}'s input size), got {list(x.shape)}; "
        "send an encoded image to have it resized",
    )
    require(x.is_floating_point(), field, f"expected a floating-point tensor, got {x.dtype}")
    x = x.float()  # a float64 value beyond float32's range is Inf from here on, and refused
    # numpy: torch.isfinite on a prepare-pool thread starts an OpenMP team of its own, far slower.
    require(bool(np.isfinite(x.detach().cpu().numpy()).all()), field, "tensor contains NaN or Inf")
    return x
