"""Shared fixtures: models load once per session; chunk-size measurements go to a temp dir."""

from __future__ import annotations

import os
import tempfile

import pytest
import skimage.data
import torch

# Measured chunk sizes are cached on disk; keep tests from writing to the user's home.
os.environ.setdefault("SALIENCY_CACHE_DIR", tempfile.mkdtemp(prefix="saliency-test-cache-"))

from saliency.imaging import to_model_input  # noqa: E402
from saliency.models import load_model  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny():
    return load_model("tinycnn")


@pytest.fixture(scope="session")
def tiny_vit():
    return load_model("tinyvit")


@pytest.fixture(scope="session")
def effnet():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def chelsea(effnet) -> torch.Tensor:
    """The cat photograph as EfficientNet-Lite0 input [3, 224, 224]."""
    return to_model_input(skimage.data.chelsea(), effnet.spec)


@pytest.fixture(scope="session")
def tiny_images(tiny) -> torch.Tensor:
    """Three different deterministic tinycnn inputs [3, 3, 32, 32]."""
    g = torch.Generator().manual_seed(1234)
    return torch.randn(3, 3, 32, 32, generator=g)
