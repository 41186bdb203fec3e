"""Serving optimisations, applied to a copy and kept only when a parity check passes.

- BatchNorm folding: an eval-mode BatchNorm2d that reads a Conv2d's output (and nothing else
  reads it; the probe found these pairs) is a per-channel affine map, so conv + BN is one conv
  with weights s * W and bias s * (b - mean) + beta, s = gamma / sqrt(var + eps), computed in
  float64. The BN becomes `nn.Identity` under its own name, so hooks and layer paths still
  resolve (faster forward+backward: docs/models.md).
- channels-last memory format on the CPU (faster for batches of 2 and more: docs/models.md).

The user's module is never changed: the optimisations go to a deep copy, whose logits and input
gradient on the probe input are compared with the user's module's; if they differ beyond float32
rounding, the unmodified module is served and the log says why.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

# A float32 fold moves logits by rounding only; a ReLU6 pre-activation within rounding of a
# threshold can flip a few gradient pixels (docs/engine.md), so the gradient is compared in L2.
LOGIT_TOLERANCE = 1e-3  # max |difference| / (1 + max |logit|)
GRADIENT_TOLERANCE = 1e-2  # ||difference||_2 / ||gradient||_2


@dataclass(frozen=True)
class Parity:
    """What was tried on the served copy and how it compared with the user's module."""

    folded: int  # BatchNorms folded into their conv
    channels_last: bool
    logits_error: float  # max |difference| / (1 + max |logit|)
    gradient_error: float  # relative L2 of the input gradient
    seconds: float  # the parity check's cost (two forward + backward passes)
    served: str  # "optimised" or "unmodified"
    reason: str = ""  # why the unmodified module is served

    def describe(self) -> str:
        tried = f"{self.folded} BatchNorm(s) folded, channels-last {'on' if self.channels_last else 'off'}"
        measured = (f"logits off by {self.logits_error:.2g} (tolerance {LOGIT_TOLERANCE:g}), input gradient by "
                    f"{self.gradient_error:.2g} relative L2 (tolerance {GRADIENT_TOLERANCE:g}); {self.seconds * 1000:.0f} ms")
        if self.served == "optimised":
            return f"serving the optimised copy: {tried}; {measured}"
        return f"serving the UNMODIFIED model ({self.reason}); tried {tried}" + (f"; {measured}" if self.seconds else "")


@torch.no_grad()
def fold_batchnorm(module: nn.Module, pairs: tuple[tuple[str, str], ...]) -> int:
    """Fold each (conv path, batchnorm path) pair of `module` in place; returns how many."""
    modules = dict(module.named_modules())
    folded = 0
    for conv_path, bn_path in pairs:
        conv, bn = modules[conv_path], modules[bn_path]
        if not isinstance(bn, nn.BatchNorm2d) or bn.training:
            continue
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(bn.running_var, dtype=torch.float64)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(gamma)
        scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        conv.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + beta).to(conv.weight.dtype),
                                 requires_grad=conv.weight.requires_grad)
        owner_path, _, name = bn_path.rpartition(".")
        setattr(modules[owner_path], name, nn.Identity())
        folded += 1
    return folded


def _logits_and_gradient(module: nn.Module, x: torch.Tensor, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with torch.enable_grad():
        logits = module(x)
        (grad,) = torch.autograd.grad(logits.max(dim=1).values.sum(), x)
    return logits.detach(), grad.detach()


def serving_copy(
    module: nn.Module, pairs: tuple[tuple[str, str], ...], channels_last: bool, probe_input: torch.Tensor
) -> tuple[nn.Module, Parity]:
    """(the module to serve, the parity report). `module` (eval mode, on the CPU) is left as it
    is; when there is nothing to change it is served itself."""
    if not pairs and not channels_last:
        return module, Parity(0, False, 0.0, 0.0, 0.0, "unmodified", "nothing to optimise")
    try:
        served = copy.deepcopy(module)
    except Exception as exc:  # a module holding something deepcopy refuses (a lock, a handle)
        return module, Parity(0, False, 0.0, 0.0, 0.0, "unmodified", f"it cannot be copied: {exc}")
    folded = fold_batchnorm(served, pairs)
    if channels_last:
        served = served.to(memory_format=torch.channels_last)
    started = time.perf_counter()
    ref_logits, ref_grad = _logits_and_gradient(module, probe_input, False)
    logits, grad = _logits_and_gradient(served, probe_input, channels_last)
    seconds = time.perf_counter() - started
    logits_error = float((logits - ref_logits).abs().max()) / (1.0 + float(ref_logits.abs().max()))
    gradient_error = float((grad - ref_grad).norm() / ref_grad.norm().clamp_min(1e-30))
    ok = logits_error <= LOGIT_TOLERANCE and gradient_error <= GRADIENT_TOLERANCE
    parity = Parity(folded, channels_last, logits_error, gradient_error, seconds,
                    "optimised" if ok else "unmodified", "" if ok else "the parity check failed")
    if not ok:
        log.warning("model optimisation changed its function: %s", parity.describe())
        return module, parity
    return served, parity
