"""Score-CAM (Wang et al. 2020): channel weights from forward passes on masked inputs.

Phase 1 (one forward-only sample, packed with other work): the CAM layer's activations A
[K, h, w]. Phase 2 (one forward-only sample per kept channel k): the input times the mask
M_k = minmax(upsample(A_k)) in [0, 1] (bilinear, align_corners=False, as our other CAM maps;
pytorch-grad-cam uses align_corners=True). Masked-out pixels become 0 in the model's input
space, the dataset's mean colour, as in RISE. Then map = ReLU(sum_k w_k A_k) at feature
resolution, upsampled like Grad-CAM.

Weights (`weighting`):
- "channel_softmax" (default): w = softmax over the kept channels of the target *logit* of each
  masked input. This is the paper's Algorithm 1 and pytorch-grad-cam's ScoreCAM. The paper's
  "increase of confidence" f(X o M_k) - f(X_b) subtracts one baseline score from every
  channel, which a softmax over channels cancels, so no baseline forward is needed.
- "class_probability": w_k = softmax over classes of the masked input's logits, at the target,
  as the authors' released code (haofanwang/Score-CAM) does.

Cost is one forward per kept channel, so `max_channels` keeps the N channels with the largest
mean activation (1280 on EfficientNet-Lite0's head is ~1280 forwards); channels constant over
the map carry no spatial information and are skipped, as in the authors' code. Channels left
out get weight 0, so under "channel_softmax" the softmax runs over the kept ones only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from saliency.attribution.executor import ChunkOutput, DeepPlan, SameTensor, SampleStream
from saliency.attribution.reduce import upsample
from saliency.attribution.registry import register
from saliency.attribution.requirements import CAM_LAYER
from saliency.attribution.types import Attribution
from saliency.errors import InvalidArgument
from saliency.instrument.hooks import resolve_layer
from saliency.models import LoadedModel

WEIGHTINGS = ("channel_softmax", "class_probability")


@dataclass(frozen=True)
class ScoreCamParams:
    # channels kept (largest mean activation first); one forward each
    max_channels: int = field(default=256, metadata={"min": 1, "max_limit": "max_scorecam_channels"})
    weighting: str = field(default="channel_softmax", metadata={"choices": WEIGHTINGS})


def select_channels(acts: torch.Tensor, max_channels: int) -> torch.Tensor:
    """acts [K, h, w] -> indices of the channels kept: not constant over the map, the
    `max_channels` largest by mean activation, ties by channel index."""
    flat = acts.reshape(acts.shape[0], -1)
    varying = (flat.amax(1) > flat.amin(1)).nonzero()[:, 0]
    means = flat[varying].mean(1)
    order = torch.sort(means, descending=True, stable=True).indices
    return varying[order[:max_channels]]


def channel_masks(acts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """acts [n, h, w] (no constant channel) -> masks [n, H, W], each min-max scaled to [0, 1]."""
    up = upsample(acts, size)
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    return (up - low) / (high - low)


def cam_channels(model: LoadedModel) -> int | None:
    """The CAM layer's channel count K when the spec's CAM classifier reveals it, else None."""
    try:
        layer = resolve_layer(model.module, model.spec.classifier_layer)
    except InvalidArgument:
        return None
    return layer.in_features if isinstance(layer, nn.Linear) else None


# The CAM layer's spatial size is known only after a forward. For memory estimates it is taken
# as 8x smaller per side than the input: EfficientNet-Lite0's head is 32x, a ViT's patch grid
# 16x (overestimated, by a few MB at most); tinycnn's 2x is underestimated, by kilobytes.
CAM_STRIDE_ESTIMATE = 8


def cam_layer_bytes(channels: int, height: int, width: int) -> int:
    """Estimated float32 bytes of one sample's CAM-layer activations [K, h, w]."""
    return 4 * channels * math.ceil(height / CAM_STRIDE_ESTIMATE) * math.ceil(width / CAM_STRIDE_ESTIMATE)


def _channel_bound(model: LoadedModel, params: ScoreCamParams) -> int:
    """How many masked inputs to reserve before the activations are known: max_channels, or
    fewer when the spec's CAM classifier reveals the layer's channel count K (queue admission
    counts this; the first phase sets the exact number)."""
    channels = cam_channels(model)
    return params.max_channels if channels is None else min(params.max_channels, channels)


@register(
    "scorecam", "deep", ScoreCamParams, "Score-CAM: channels weighted by masked-input scores (Wang et al. 2020)",
    supports=CAM_LAYER, enum="METHOD_SCORECAM", oneof="scorecam", fallback="gradcam",
    example={"max_channels": 3},
)
def plan_score_cam(model: LoadedModel, x: torch.Tensor, target: int, params: ScoreCamParams) -> DeepPlan:
    """x [C, H, W] normalised input -> a DeepPlan whose map is Score-CAM [H, W] (raw [h, w])."""
    image = SameTensor(x)  # the caller's tensor: plans of one request share it, wherever it is
    x = x.detach().float().cpu()
    size = tuple(x.shape[-2:])
    state: dict[str, torch.Tensor] = {}

    def the_input(start: int, stop: int) -> torch.Tensor:
        return x[None]

    def keep_activations(start: int, out: ChunkOutput) -> None:
        acts = out.layer[0].detach().float().cpu().clone()  # [K, h, w]
        kept = select_channels(acts, params.max_channels)
        state["acts"], state["kept"] = acts, kept
        state["scores"] = torch.zeros(len(kept), dtype=torch.float64)
        masked.n_samples = len(kept)  # the upper bound becomes the real count

    def masked_inputs(start: int, stop: int) -> torch.Tensor:
        channels = state["kept"][start:stop]
        return x[None] * channel_masks(state["acts"][channels], size)[:, None]

    def record(start: int, out: ChunkOutput) -> None:
        if params.weighting == "class_probability":
            score = out.logits.double().softmax(-1)[:, target]
        else:
            score = out.logits[:, target].double()
        state["scores"][start : start + len(score)] = score.cpu()

    def finish() -> Attribution:
        acts, kept, scores = state["acts"], state["kept"], state["scores"]
        if params.weighting == "channel_softmax":
            weights = scores.softmax(0)
        else:
            weights = scores
        raw = torch.relu(torch.einsum("k,khw->hw", weights.float(), acts[kept]))
        return Attribution(
            "scorecam", target, upsample(raw, size), raw, {"channels": float(len(kept))}
        )

    # Neither phase depends on the target (the channels kept come from the activations and
    # max_channels): other targets' tasks share both phases' forwards.
    first = SampleStream(
        1, False, the_input, keep_activations, capture_layer=True, sample_shape=tuple(x.shape),
        share_key=("scorecam.activations", image),
    )
    masked = SampleStream(
        _channel_bound(model, params), False, masked_inputs, record, after=first, sample_shape=tuple(x.shape),
        share_key=("scorecam.masked", image, params.max_channels),
    )
    # The activations [K, h, w], the kept ones again in finish, a score per channel, the map.
    channels = cam_channels(model) or params.max_channels
    acts = cam_layer_bytes(channels, *size)
    held = acts + acts * min(channels, params.max_channels) // channels + 8 * channels + 4 * size[0] * size[1]
    return DeepPlan("scorecam", target, [first, masked], finish, held_bytes=held)
