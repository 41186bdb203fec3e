"""The served EfficientNet-Lite0 (BatchNorm folded into convs, symmetric padding inside the conv)
computes the same function as the checkpoint's unfused architecture, under the same names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saliency.models.efficientnet_lite import SameConv2d, fold_batchnorm, load_efficientnet_lite0


@pytest.fixture(scope="module")
def unfused() -> nn.Module:
    return load_efficientnet_lite0(fold_bn=False)


def _logits_and_input_grad(module: nn.Module, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    logits = module(x)
    (grad,) = torch.autograd.grad(logits[:, target].sum(), x)
    return logits.detach(), grad


def _capture(module: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = dict(module.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.inference_mode():
            module(x)
    finally:
        handle.remove()
    return seen[0]


def test_served_model_has_no_batchnorm_and_keeps_every_name(effnet, unfused):
    served = dict(effnet.module.named_modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in served.values())
    for name, m in unfused.named_modules():
        assert name in served, name  # hooks, CAM layer, sanity layers, rules all find their module
        if isinstance(m, nn.BatchNorm2d):
            assert isinstance(served[name], nn.Identity), name
        else:
            assert type(served[name]) is type(m), name
    assert isinstance(served["head_act"], nn.ReLU6) and isinstance(served["_fc"], nn.Linear)


@pytest.mark.slow
def test_folding_is_exact_in_float64(unfused):
    """In float64 the folded model's logits and input gradients equal the unfused model's."""
    reference = load_efficientnet_lite0(fold_bn=False).double()
    folded = fold_batchnorm(load_efficientnet_lite0(fold_bn=False).double())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref_logits, ref_grad = _logits_and_input_grad(reference, x, 285)
    logits, grad = _logits_and_input_grad(folded, x, 285)
    torch.testing.assert_close(logits, ref_logits, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grad, ref_grad, atol=1e-12 * float(ref_grad.abs().max()), rtol=1e-9)


def test_served_float32_matches_unfused_on_a_photograph(effnet, unfused, chelsea):
    """float32: logits and CAM-layer activations to rounding; the input gradient to rounding
    almost everywhere. A ReLU6 pre-activation within rounding of 0 or 6 can flip its gate in
    EITHER float32 model (each differs from the float64 truth by ~1e-2 of the peak at a few
    pixels on this photograph, the unfused one a little more), so the bound is on the mean and
    on how many pixels move, with a loose cap on the peak; exactness is the float64 test's job."""
    x = chelsea[None]
    logits, grad = _logits_and_input_grad(effnet.module, x, 285)
    ref_logits, ref_grad = _logits_and_input_grad(unfused, x, 285)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    diff, peak = (grad - ref_grad).abs(), float(ref_grad.abs().max())
    assert float(diff.mean()) <= 2e-3 * float(ref_grad.abs().mean())
    assert float((diff > 1e-3 * peak).float().mean()) <= 0.01
    assert float(diff.max()) <= 0.05 * peak
    cam, ref_cam = _capture(effnet.module, "head_act", x), _capture(unfused, "head_act", x)
    torch.testing.assert_close(cam, ref_cam, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(225, 224), (97, 130), (33, 31)])
def test_served_matches_unfused_at_other_input_sizes(effnet, unfused, size):
    """Odd and even sizes exercise both the in-conv (symmetric) and explicit (asymmetric) padding."""
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(effnet.module(x), unfused(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("size", [(8, 8), (9, 8), (7, 11)])
def test_same_conv_matches_tensorflow_same_padding(stride, kernel, size):
    """TF 'SAME': total padding max((ceil(n/s) - 1) * s + k - n, 0), the extra pixel at the end."""
    torch.manual_seed(0)
    conv = SameConv2d(3, 4, kernel, stride=stride, bias=True)
    x = torch.randn(1, 3, *size)
    pads = [max((-(-n // stride) - 1) * stride + kernel - n, 0) for n in size]
    padded = F.pad(x, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2))
    expected = F.conv2d(padded, conv.weight, conv.bias, stride)
    out = conv(x)
    assert out.shape[-2:] == tuple(-(-n // stride) for n in size)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_fold_refuses_a_model_in_training_mode():
    model = load_efficientnet_lite0(fold_bn=False).train()
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model)
