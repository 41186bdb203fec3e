"""A tiny deterministic CNN: fast unit tests that exercise every code path of the engine."""

from __future__ import annotations

import torch
from torch import nn

TINY_INPUT_SIZE = (32, 32)
TINY_CLASSES = 10


class TinyCNN(nn.Module):
    """conv-relu x3 (the last one is the CAM layer `features_act`) -> GAP -> linear.

    forward(x: [B, 3, 32, 32]) -> logits [B, 10]. Any spatial size works.
    """

    def __init__(self, num_classes: int = TINY_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.features_act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.features_act(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_tinycnn(seed: int = 0) -> TinyCNN:
    """Same weights on every machine for a given torch version: init under a fixed seed.

    BatchNorm gets non-trivial running statistics so eval-mode behaviour is really tested.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN()
        model.bn2.running_mean.uniform_(-0.2, 0.2)
        model.bn2.running_var.uniform_(0.5, 1.5)
    return model.eval()
