"""Attention maps of a vision transformer, from the prediction's own forward (fast methods).

- attention_rollout (Abnar & Zuidema 2020): per layer l, fuse the heads, A_l [N, N]; optionally
  zero the lowest `discard_ratio` of its weights (as jacobgil/vit-explain); account for the
  residual connection, A_hat_l = 0.5 * A_l + 0.5 * I, rows re-normalised to sum to 1; multiply
  R = A_hat_L ... A_hat_1 (layers up to `layer`). The map is R's CLS row over the patch tokens.
- raw_attention: the CLS row over the patch tokens of one layer's fused attention A_layer.

Token order: CLS first, then any register tokens (`ModelSpec.prefix_tokens` counts both), then
the patch grid row by row (as `models/vit.py`). The probabilities come from modules that output
them, or, for fused attention (F.scaled_dot_product_attention, nn.MultiheadAttention), are
recomputed from each call's queries and keys while the forward runs (`capture`). Both maps are
class-agnostic (they are read off the forward, before any class is chosen): every target gets
the same map, as with Eigen-CAM.

Two deliberate differences from vit-explain: its re-normalisation `a / a.sum(dim=-1)` divides
column j by row j's sum (a broadcasting slip); we divide each row by its own sum. And it discards
in the first image of a batch only; we discard per image. Maps are not scaled to max 1 (the
response's output options normalise maps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from saliency.attribution.fast_inputs import FastInputs
from saliency.attribution.reduce import upsample
from saliency.attribution.registry import ATTENTION_PROBS, register
from saliency.errors import InvalidArgument, require
from saliency.instrument.hooks import capture_fused_attention, capture_output
from saliency.models import LoadedModel

HEAD_FUSIONS = ("mean", "max", "min")
MAX_LAYER = 1023  # a bound for the API; the model's own depth is checked when it is known


@dataclass(frozen=True)
class AttentionParams:
    """The fields both attention methods share (one API message serves both).

    head_fusion: how heads are fused per layer; discard_ratio: the fraction of each fused
    [N, N] matrix's lowest weights set to 0; layer: the deepest layer used (-1: the model's
    last) — rollout multiplies the layers up to it, raw attention shows it.
    """

    head_fusion: str = field(default="mean", metadata={"choices": HEAD_FUSIONS})
    discard_ratio: float = field(
        default=0.0, metadata={"min": 0, "max": 1, "exclusive_max": True, "note": "the fraction of weights dropped"}
    )
    layer: int = field(
        default=-1, metadata={"min": -1, "max": MAX_LAYER, "note": "a 0-based block index, or -1 for the last"}
    )
    method: ClassVar[str] = ""


@dataclass(frozen=True)
class AttentionRolloutParams(AttentionParams):
    method: ClassVar[str] = "attention_rollout"


@dataclass(frozen=True)
class RawAttentionParams(AttentionParams):
    method: ClassVar[str] = "raw_attention"


def check_layers(model: LoadedModel, params: AttentionParams) -> None:
    """Before the forward: the model has its attention layers, and `params.layer` exists."""
    spec = model.spec
    depth = spec.fused_attention or len(attention_layer_names(model, params.method))
    _resolve_layer(params.layer, depth, params.method)


@register(
    "attention_rollout",
    "fast",
    AttentionRolloutParams,
    "attention rollout (Abnar & Zuidema 2020), class-agnostic: same map for every target; ViT only",
    enum="METHOD_ATTENTION_ROLLOUT",
    oneof="attention",
    needs_from_pass=(ATTENTION_PROBS,),
    class_agnostic=True,
    check=check_layers,
    example={"discard_ratio": 0.5},
)
def attention_rollout(params: AttentionParams, inputs: FastInputs) -> tuple[torch.Tensor, torch.Tensor]:
    return _grid_maps(rollout(inputs.attention, params), params, inputs)


@register(
    "raw_attention",
    "fast",
    RawAttentionParams,
    "CLS-to-patch attention of one layer, heads fused; class-agnostic: same map for every target; ViT only",
    enum="METHOD_RAW_ATTENTION",
    oneof="attention",
    needs_from_pass=(ATTENTION_PROBS,),
    class_agnostic=True,
    check=check_layers,
    example={"layer": 0, "head_fusion": "max"},
)
def raw_attention_map(params: AttentionParams, inputs: FastInputs) -> tuple[torch.Tensor, torch.Tensor]:
    return _grid_maps(raw_attention(inputs.attention, params), params, inputs)


def _grid_maps(matrix: torch.Tensor, params: AttentionParams, inputs: FastInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, N, N] -> the CLS row over the patches upsampled [n, H, W] (bilinear), and as its grid [n, h, w]."""
    raw = cls_patch_map(matrix, inputs.size, params.method, inputs.model.spec.prefix_tokens)
    return upsample(raw, inputs.size), raw


@contextmanager
def capture(model: LoadedModel, batch: int, wanted: bool = True) -> Iterator[Callable[[], list[torch.Tensor]]]:
    """Capture the attention of the forward run inside the context (when `wanted`); yields a
    function returning, after that forward, each layer's probabilities [B, heads, N, N], first
    layer first ([] when not wanted).

    Modules that output probabilities are captured by hooks; fused attention
    (scaled_dot_product_attention, nn.MultiheadAttention) by recomputing each call's
    probabilities from its queries and keys (`hooks.capture_fused_attention`).
    """
    if not wanted:
        yield list
        return
    spec = model.spec
    if spec.fused_attention:
        with capture_fused_attention() as captured:
            yield lambda: _checked(captured, spec.fused_attention, batch)
        return
    layers = attention_layer_names(model, "attention_layers")
    with ExitStack() as stack:
        captured_per_layer = [stack.enter_context(capture_output(model.module, name)) for name in layers]
        yield lambda: _attention_probs(captured_per_layer, layers, batch)


def _checked(captured: list[torch.Tensor], calls: int, batch: int) -> list[torch.Tensor]:
    """The fused calls' probabilities, checked: `calls` of them, each [B, heads, N, N]."""
    shapes = [tuple(a.shape) for a in captured]
    require(
        len(captured) == calls and all(len(s) == 4 and s[0] == batch and s[2] == s[3] for s in shapes),
        "attention_layers",
        f"the forward made {len(captured)} attention call(s) of shapes {shapes[:3]}; the probe saw {calls} "
        "self-attention calls [batch, heads, tokens, tokens] per forward",
    )
    return captured


def _attention_probs(captured: list[list[torch.Tensor]], layers: Sequence[str], batch: int) -> list[torch.Tensor]:
    """Each attention layer's one output of this forward, checked: [B, heads, N, N] per layer."""
    attns = []
    for name, outputs in zip(layers, captured):
        shape = tuple(outputs[0].shape) if len(outputs) == 1 else ()
        require(
            len(shape) == 4 and shape[0] == batch and shape[2] == shape[3],
            "attention_layers",
            f"attention layer {name!r} gave {len(outputs)} output(s) of shape {list(shape)}; "
            "expected one [batch, heads, tokens, tokens] per forward",
        )
        attns.append(outputs[0].detach())
    return attns


def attention_layer_names(model: LoadedModel, method: str) -> tuple[str, ...]:
    """The spec's attention modules; raises InvalidArgument(method) for a model without them."""
    layers = model.spec.attention_layers
    require(
        bool(layers),
        method,
        f"model {model.spec.name} has no attention layers: attention maps need a vision transformer",
    )
    modules = dict(model.module.named_modules())
    missing = [name for name in layers if name not in modules]
    require(not missing, method, f"model {model.spec.name} has no layer(s) {missing} (its attention_layers)")
    return layers


def fuse_heads(attn: torch.Tensor, how: str) -> torch.Tensor:
    """attn [B, heads, N, N] -> [B, N, N] (mean, max or min over heads)."""
    if how == "mean":
        return attn.mean(dim=1)
    return attn.amax(dim=1) if how == "max" else attn.amin(dim=1)


def discard_lowest(a: torch.Tensor, ratio: float) -> torch.Tensor:
    """a [B, N, N] -> a copy with each image's lowest floor(ratio * N * N) weights set to 0,
    except the CLS-to-CLS weight (vit-explain keeps it)."""
    flat = a.flatten(1)
    k = int(flat.shape[1] * ratio)
    if k == 0:
        return a
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep.scatter_(1, flat.topk(k, dim=1, largest=False).indices, False)
    keep[:, 0] = True
    return (flat * keep).view_as(a)


def _resolve_layer(layer: int, depth: int, method: str) -> int:
    require(
        layer < depth,
        f"{method}.layer",
        f"{layer} is beyond this model's {depth} attention layers (0..{depth - 1}; -1 for the last)",
    )
    return depth - 1 if layer == -1 else layer


def rollout(attns: Sequence[torch.Tensor], params: AttentionParams) -> torch.Tensor:
    """attns: per layer [B, heads, N, N], first layer first -> R [B, N, N] through `params.layer`."""
    last = _resolve_layer(params.layer, len(attns), params.method)
    result = None
    for attn in attns[: last + 1]:
        a = discard_lowest(fuse_heads(attn.float(), params.head_fusion), params.discard_ratio)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def raw_attention(attns: Sequence[torch.Tensor], params: AttentionParams) -> torch.Tensor:
    """attns: per layer [B, heads, N, N] -> that layer's fused attention [B, N, N]."""
    layer = _resolve_layer(params.layer, len(attns), params.method)
    return discard_lowest(fuse_heads(attns[layer].float(), params.head_fusion), params.discard_ratio)


def cls_patch_map(matrix: torch.Tensor, size: tuple[int, int], method: str, prefix: int = 1) -> torch.Tensor:
    """matrix [B, N, N] (CLS first, then prefix - 1 register tokens, then the patches) -> the CLS
    row over the patches as a grid [B, h, w], with h * w = N - prefix and h / w = the input's
    aspect ratio `size` (H, W)."""
    patches = matrix.shape[-1] - prefix
    height, width = size
    h = max(1, round((patches * height / width) ** 0.5))
    w = patches // h
    if h * w != patches:
        raise InvalidArgument(
            f"attention over {matrix.shape[-1]} tokens is not {prefix} token(s) plus a patch grid "
            f"of a {height}x{width} input",
            method,
        )
    return matrix[:, 0, prefix:].reshape(-1, h, w)
