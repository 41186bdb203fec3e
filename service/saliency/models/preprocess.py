"""How an image becomes a model input, and where that input lies in the image.

Two resize modes (a model config's `input.resize`):
- `stretch`: the whole image resized to the input size [h, w]; a map covers the whole image.
- `crop`: the image scaled so that it covers [h / 0.875, w / 0.875] (for a square input, the
  shorter side to size / 0.875: 224 -> 256), then the centre [h, w] cut out: torchvision's
  `Resize(256) + CenterCrop(224)` evaluation preprocessing. A map covers only that centre.

`input_region` says where the model input lies in the image's pixels, so maps can be drawn
over, or resized to, the original image without being stretched over parts the model never
saw (those are NaN in maps at the original size and dimmed in overlays; render.place_map).

The sizes follow torchvision's rounding (the longer side truncated, the crop offset rounded),
so a model trained with that preprocessing sees the same pixels here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saliency.wire.types import InputRegion  # the API's type: Attribution.region

RESIZE_MODES = ("stretch", "crop")
CROP_FRACTION = 0.875  # the input is this fraction of the scaled image (224 of 256)


def scaled_size(image_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int]:
    """`crop`: the size (Hr, Wr) the whole image is resized to before its centre is cut out.

    Each side at least input / CROP_FRACTION, the aspect kept; as torchvision's Resize(int),
    the side that sets the scale is exact and the other truncated."""
    height, width = image_size
    target_h, target_w = round(input_size[0] / CROP_FRACTION), round(input_size[1] / CROP_FRACTION)
    if target_h * width >= target_w * height:  # the height sets the scale (integers: no float ties)
        return target_h, max(int(target_h * width / height), target_w)
    return max(int(target_w * height / width), target_h), target_w


def crop_offset(scaled: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int]:
    """`crop`: (top, left) of the input in the scaled image, as torchvision's CenterCrop."""
    return int(round((scaled[0] - input_size[0]) / 2.0)), int(round((scaled[1] - input_size[1]) / 2.0))


def input_region(resize: str, input_size: tuple[int, int], image_size: tuple[int, int]) -> InputRegion:
    """Where the model input of an image of `image_size` (H0, W0) lies in that image."""
    if resize == "stretch":
        return InputRegion.whole(image_size)
    if resize != "crop":
        raise ValueError(f"resize {resize!r} is not one of {RESIZE_MODES}")
    scaled = scaled_size(image_size, input_size)
    top, left = crop_offset(scaled, input_size)
    sy, sx = image_size[0] / scaled[0], image_size[1] / scaled[1]
    return InputRegion(
        left * sx, top * sy, (left + input_size[1]) * sx, (top + input_size[0]) * sy
    )


def resize_to_input(pixels: torch.Tensor, input_size: tuple[int, int], resize: str) -> torch.Tensor:
    """Pixels [3, H0, W0] in [0, 1] -> [3, h, w] at the model's input size, per `resize`.

    Bilinear with antialiasing (Pillow's filter for downscaling), clamped to [0, 1]."""
    if resize == "stretch":
        size = input_size
    elif resize == "crop":
        size = scaled_size(tuple(pixels.shape[-2:]), input_size)
    else:
        raise ValueError(f"resize {resize!r} is not one of {RESIZE_MODES}")
    resized = F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    if resize == "crop":
        top, left = crop_offset(size, input_size)
        resized = resized[:, top : top + input_size[0], left : left + input_size[1]]
    return resized.clamp(0, 1)  # a copy: contiguous, also after a crop
