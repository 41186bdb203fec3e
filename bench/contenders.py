"""The code being timed: our engine, a plain forward+backward, and Captum doing the same job.

Each function does one complete job on the reference workload and returns its result, so the
benchmarks time exactly these calls and the parity checks compare exactly their outputs.
Captum is given its fastest reasonable use: the prediction forward runs under `no_grad`, and
chunk knobs are swept by the benchmarks.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from captum.attr import (
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)

from bench.progress import log
from bench.workload import Workload
from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.fast import FastResult, fast_pass
from saliency.attribution.registry import get_method, make_params
from saliency.attribution.tuning import chunk_sizes_for
from saliency.attribution.types import Attribution, Targets
from saliency.instrument.hooks import resolve_layer

FAST_METHODS = ("vanilla", "input_x_gradient", "gradcam")

# Captum sets requires_grad on our input itself and says so on every call.
warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")


# --- ours -------------------------------------------------------------------------------------


def ours_fast(w: Workload, top_k: int, methods: Sequence[str] = FAST_METHODS) -> FastResult:
    """Prediction plus the fast maps for the top_k classes: one forward, top_k backwards."""
    params = {name: make_params(name) for name in methods}
    (result,) = fast_pass(w.model, w.x[None], [Targets(top_k=top_k)], params)
    return result


@functools.cache
def auto_chunk_sizes(w: Workload) -> ChunkSizes:
    """The chunk sizes the service would use: measured once per machine, cached on disk."""
    started = time.perf_counter()
    sizes = chunk_sizes_for(w.model)
    log(
        f"  automatic chunk sizes: grad={sizes.grad}, forward={sizes.forward} "
        f"({time.perf_counter() - started:.1f}s to measure or read from the disk cache)"
    )
    return sizes


def executor(w: Workload, grad_chunk: int | None = None) -> ChunkExecutor:
    """A chunk executor at the automatic sizes, or with an explicit gradient chunk size."""
    auto = auto_chunk_sizes(w)
    return ChunkExecutor(w.model, ChunkSizes(grad_chunk or auto.grad, auto.forward))


def ours_deep(
    w: Workload,
    ex: ChunkExecutor,
    method: str,
    targets: Sequence[int],
    plan_kwargs: dict[str, Any] | None = None,
    **params: Any,
) -> list[Attribution]:
    """One deep map per target, all packed into the same executor run."""
    info, p = get_method(method), make_params(method, **params)
    tasks = [info.plan(w.model, w.x, t, p, **(plan_kwargs or {})) for t in targets]
    return ex.run(tasks)


# --- a plain forward + backward ---------------------------------------------------------------


def plain_forward_backward(w: Workload) -> torch.Tensor:
    """What any gradient map costs at least: d logit_top1 / d x, as a user would write it."""
    x = w.x[None].clone().requires_grad_(True)
    logits = w.model.module(x)
    (grad,) = torch.autograd.grad(logits[0, logits[0].argmax()], x)
    return grad


# --- Captum -----------------------------------------------------------------------------------


def captum_fast(w: Workload, top_k: int, batched: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Prediction forward, then Saliency and upsampled LayerGradCam for the top_k classes.

    batched: one call each on a batch of top_k copies with a target list, else top_k calls.
    Returns (saliency [n, 3, H, W], grad-cam upsampled [n, 1, H, W]) per call.
    """
    module = w.model.module
    x = w.x[None]
    with torch.no_grad():
        logits = module(x)
    logits.softmax(-1).topk(5)  # the prediction, as our fast pass reports it
    classes = logits[0].topk(top_k).indices.tolist()
    saliency = Saliency(module)
    gradcam = LayerGradCam(module, resolve_layer(module, w.model.spec.target_layer))
    size = tuple(x.shape[-2:])
    jobs = [(x.expand(top_k, -1, -1, -1), classes)] if batched else [(x, c) for c in classes]
    out = []
    for inputs, target in jobs:
        sal = saliency.attribute(inputs, target=target, abs=True)
        cam = gradcam.attribute(inputs, target=target, relu_attributions=True)
        out.append((sal, LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")))
    return out


def captum_ig(w: Workload, n_steps: int, internal_batch_size: int | None) -> torch.Tensor:
    """Captum IG from a zero baseline (Gauss-Legendre, its default), [1, 3, H, W]."""
    ig = IntegratedGradients(w.model.module)
    return ig.attribute(
        w.x[None],
        baselines=0.0,
        target=w.target,
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
    )


def captum_smoothgrad(
    w: Workload, n_samples: int, stdev: float, batch_size: int | None
) -> torch.Tensor:
    """Captum NoiseTunnel(Saliency) SmoothGrad of |dS/dx|, [1, 3, H, W]."""
    tunnel = NoiseTunnel(Saliency(w.model.module))
    return tunnel.attribute(
        w.x[None],
        nt_type="smoothgrad",
        nt_samples=n_samples,
        nt_samples_batch_size=batch_size,
        stdevs=stdev,
        target=w.target,
        abs=True,
    )


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|, after squeezing batch dimensions."""
    a, b = ours.detach().squeeze().float().cpu(), reference.detach().squeeze().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
