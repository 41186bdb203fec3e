"""Small models with known answers, wrapped as zoo models, for closed-form tests."""

from __future__ import annotations

import torch
from torch import nn

from saliency.models import LoadedModel, ModelSpec


def wrap(
    module: nn.Module, size: tuple[int, int], classes: int, target_layer: str, channels: int = 3
) -> LoadedModel:
    spec = ModelSpec(
        name=f"test-{type(module).__name__.lower()}",
        input_size=size,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        target_layer=target_layer,
        labels=tuple(f"c{i}" for i in range(classes)),
        description="test model",
        build=lambda: module,
    )
    return LoadedModel(spec, module.eval(), torch.device("cpu"))


class LinearModel(nn.Module):
    """logits = W flatten(x) + b: IG is exactly (x - x') * W[c]."""

    def __init__(self, size=(8, 8), classes=4):
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Identity()
        self.fc = nn.Linear(3 * size[0] * size[1], classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class QuadrantModel(nn.Module):
    """Class 0's logit is 12 x the mean of the top-left quadrant; class 1's is constant 6."""

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()

    def forward(self, x):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        evidence = 12 * self.features(x)[:, :, :h, :w].mean(dim=(1, 2, 3))
        return torch.stack([evidence, torch.full_like(evidence, 6.0)], dim=1)
