"""A compiled copy of a served model for the deep methods' plain model calls (`compile_model`).

`torch.compile` (inductor) turns the module into fused kernels; on CUDA, mode
"reduce-overhead" also replays CUDA graphs, which is what a launch-bound fast chunk needs. Only
calls with no hooks and no modified backward rule use it (the executor decides): forward-only
samples (RISE, occlusion, Score-CAM, KernelSHAP, LIME) and input gradients (IG, SmoothGrad,
GradientSHAP, XRAI). Captures of a layer and the rectifier / relevance rules need the eager
module's hooks, so those calls stay eager.

`compile_for_chunks` compiles one graph per kind of call at its chunk size (a smaller batch is
padded to it), runs both at start so no request pays for compilation, then checks the
compiled copy's logits and input gradient against the eager module on a probe batch. If
compiling fails or the check does not pass, it returns None and the eager module serves: a
faster map that is not the model's own is not served.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from saliency.models import LoadedModel

log = logging.getLogger(__name__)
# float32 kernels fused in another order: relative L2 of logits and input gradient.
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CompiledModel:
    module: nn.Module  # call with inputs laid out as the executor lays them out
    mode: str
    compile_seconds: float  # compiling and the warm-up calls of every shape
    logits_error: float  # relative L2 to the eager module on the probe batch
    gradient_error: float


class _PaddedToChunk(nn.Module):
    """Calls the compiled module with a full chunk: a smaller batch (a task's last chunk) is
    padded with copies of its first row and the answer cut back. Static shapes compile far
    faster than a dynamic batch dimension, and no request meets a shape not compiled at start."""

    def __init__(self, compiled: nn.Module, grad_chunk: int, forward_chunk: int):
        super().__init__()
        self.compiled = compiled
        self.grad_chunk, self.forward_chunk = grad_chunk, forward_chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.forward_chunk if torch.is_inference_mode_enabled() else self.grad_chunk
        n = x.shape[0]
        if n >= full:
            return self.compiled(x)
        pad = x[:1].expand(full - n, *x.shape[1:])
        return self.compiled(torch.cat([x, pad]).contiguous(memory_format=_format(x)))[:n]


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _call(module: nn.Module, x: torch.Tensor, needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The executor's two kinds of call: logits, and the input gradient of the top logit."""
    if not needs_grad:
        with torch.inference_mode():
            return module(x).float(), None
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = module(x)
        picked = logits.gather(1, logits.argmax(1, keepdim=True))
        (grad,) = torch.autograd.grad(picked, [x], torch.ones_like(picked))
    return logits.detach().float(), grad


def _layout(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    x = x.to(model.device, torch.float32)
    return x.contiguous(memory_format=torch.channels_last) if model.device.type == "cpu" else x


def compile_for_chunks(model: LoadedModel, chunk_sizes: tuple[int, int], mode: str = "default") -> CompiledModel | None:
    """A compiled copy of `model.module` warmed up for chunks of `chunk_sizes` (with gradient,
    forward-only) and checked against the eager module; None when it cannot be used."""
    channels = len(model.spec.mean)
    h, w = model.spec.input_size
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    try:
        grad_chunk, forward_chunk = chunk_sizes
        compiled = _PaddedToChunk(torch.compile(model.module, mode=mode, dynamic=False), grad_chunk, forward_chunk)
        for needs_grad, chunk in ((True, grad_chunk), (False, forward_chunk)):
            for n in sorted({chunk, max(1, chunk // 2)}):  # a full chunk, and a padded remainder
                _call(compiled, _layout(model, torch.randn(n, channels, h, w, generator=generator)), needs_grad)
        seconds = time.perf_counter() - started
        probe = _layout(model, torch.randn(max(2, min(grad_chunk, 4)), channels, h, w, generator=generator))
        logits, grad = _call(compiled, probe, needs_grad=True)
        eager_logits, eager_grad = _call(model.module, probe, needs_grad=True)
    except Exception:  # noqa: BLE001 - any compiler failure leaves the eager module serving
        log.exception("compile_model: %s could not be compiled (%s); serving it eager", model.spec.name, mode)
        return None
    logits_error, gradient_error = _relative(logits, eager_logits), _relative(grad, eager_grad)
    if max(logits_error, gradient_error) > PARITY_TOLERANCE:
        log.warning(
            "compile_model: %s compiled (%s) differs from eager (logits %.2e, gradient %.2e > %.0e); serving it eager",
            model.spec.name, mode, logits_error, gradient_error, PARITY_TOLERANCE,
        )
        return None
    log.info("compile_model: %s compiled (%s) in %.1f s; logits %.1e, gradient %.1e from eager",
             model.spec.name, mode, seconds, logits_error, gradient_error)
    return CompiledModel(compiled, mode, seconds, logits_error, gradient_error)
