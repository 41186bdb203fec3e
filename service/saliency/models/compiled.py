"""A compiled copy of a served model for the deep methods' forward-only calls (`compile_model`).

`torch.compile` (inductor) turns the module into fused kernels; on CUDA, mode
"reduce-overhead" also replays CUDA graphs. The executor uses it for forward-only samples with no
layer capture (RISE, occlusion, Score-CAM's masked forwards, KernelSHAP, LIME). Calls with a
gradient stay eager: on the CPU the compiled forward+backward of EfficientNet-Lite0 ran 5-7x
slower than eager (bench/compiled.py, docs/engine.md), and captures and backward rules need the
eager module's hooks anyway.

`compile_for_chunks` compiles one static graph at the forward chunk size (a shorter last chunk is
padded to it), runs it at start so no request pays for compilation, then checks the compiled
copy's logits against the eager module on a probe batch. If compiling fails or the check does
not pass, it returns None and the eager module serves: a faster map that is not the model's own
is not served.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from saliency.models import LoadedModel

log = logging.getLogger(__name__)
# float32 kernels fused in another order: relative L2 of the logits.
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CompiledModel:
    module: nn.Module  # call with inputs laid out as the executor lays them out
    compile_seconds: float  # compiling and the warm-up calls
    logits_error: float  # relative L2 to the eager module on the probe batch


class _PaddedToChunk(nn.Module):
    """Calls the compiled module with a full chunk: a smaller batch (a task's last chunk) is
    padded with copies of its first row and the answer cut back. A static shape compiles far
    faster than a dynamic batch dimension, and no request meets a shape not compiled at start."""

    def __init__(self, compiled: nn.Module, chunk: int):
        super().__init__()
        self.compiled = compiled
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n >= self.chunk:
            return self.compiled(x)
        pad = x[:1].expand(self.chunk - n, *x.shape[1:])
        return self.compiled(torch.cat([x, pad]).contiguous(memory_format=_format(x)))[:n]


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _logits(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():  # as the executor's forward-only calls
        return module(x).float()


def compile_for_chunks(model: LoadedModel, forward_chunk: int, mode: str = "default") -> CompiledModel | None:
    """A compiled copy of `model.module` for forward-only chunks of `forward_chunk` samples,
    compiled at start and checked against the eager module; None when it cannot be used."""
    channels = len(model.spec.mean)
    h, w = model.spec.input_size
    generator = torch.Generator().manual_seed(0)

    def batch(n: int) -> torch.Tensor:
        x = torch.randn(n, channels, h, w, generator=generator).to(model.device)
        return x.contiguous(memory_format=torch.channels_last) if model.device.type == "cpu" else x

    started = time.perf_counter()
    try:
        compiled = _PaddedToChunk(torch.compile(model.module, mode=mode, dynamic=False), forward_chunk)
        for n in sorted({forward_chunk, max(1, forward_chunk // 2)}):  # a full chunk, a padded one
            _logits(compiled, batch(n))
        seconds = time.perf_counter() - started
        probe = batch(max(1, min(forward_chunk, 4)))
        error = _relative(_logits(compiled, probe), _logits(model.module, probe))
    except Exception:  # noqa: BLE001 - any compiler failure leaves the eager module serving
        log.exception("compile_model: %s could not be compiled (%s); serving it eager", model.spec.name, mode)
        return None
    if error > PARITY_TOLERANCE:
        log.warning("compile_model: %s compiled (%s) differs from eager (logits %.2e > %.0e); serving it eager",
                    model.spec.name, mode, error, PARITY_TOLERANCE)
        return None
    log.info("compile_model: %s compiled (%s) in %.1f s; logits %.1e from eager", model.spec.name, mode, seconds, error)
    return CompiledModel(compiled, seconds, error)
