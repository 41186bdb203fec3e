"""Choosing `max_chunk` by measurement, per model, device and kind (with / without gradient).

Per-sample cost against chunk size is not monotonic on a CPU: on this machine Captum's IG on
EfficientNet-Lite0 runs 2.3x faster at 5 samples per chunk than at 50 (caches, threading).
We time a few candidate sizes once and keep the cheapest per sample; results are cached in
memory and on disk (keyed by model and its weights' digest, device, torch version and thread count).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path

import torch

from saliency.attribution.executor import ChunkSizes
from saliency.models import LoadedModel

GRAD_CANDIDATES = (1, 2, 4, 6, 8, 12, 16, 24, 32)
FORWARD_CANDIDATES = (4, 8, 16, 32, 64)
# A GPU keeps gaining from bigger batches long after a CPU stops (docs/engine.md, the H200 runs).
GPU_GRAD_CANDIDATES = GRAD_CANDIDATES + (48, 64, 96, 128)
GPU_FORWARD_CANDIDATES = FORWARD_CANDIDATES + (128, 256)
_cache: dict[str, ChunkSizes] = {}
_lock = threading.Lock()


def _cache_file() -> Path:
    root = os.environ.get("SALIENCY_CACHE_DIR") or Path.home() / ".cache" / "saliency"
    return Path(root) / "chunk_sizes.json"


def _key(model: LoadedModel) -> str:
    h, w = model.spec.input_size
    # A user's config may name a different model under the same name tomorrow.
    return "|".join(
        [model.spec.name, model.weights_digest[:16], str(model.device), f"{h}x{w}", torch.__version__,
         str(torch.get_num_threads()), platform.processor() or platform.machine()]
    )


def per_sample_seconds(model: LoadedModel, chunk: int, needs_grad: bool, repeats: int = 2) -> float:
    """Best-of-`repeats` wall time of one chunk of random inputs, divided by its size."""
    h, w = model.spec.input_size
    x = torch.randn(chunk, 3, h, w, device=model.device)
    if model.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up allocators and kernels
        started = time.perf_counter()
        if needs_grad:
            xg = x.clone().requires_grad_(True)
            with torch.enable_grad():
                out = model.module(xg)
                torch.autograd.grad(out[:, 0].sum(), xg)
        else:
            with torch.inference_mode():
                model.module(x)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best / chunk


def _best(model: LoadedModel, candidates: tuple[int, ...], needs_grad: bool) -> int:
    best_size, best_cost, worse_in_a_row = candidates[0], float("inf"), 0
    for size in candidates:
        cost = per_sample_seconds(model, size, needs_grad)
        if cost < best_cost:
            best_size, best_cost, worse_in_a_row = size, cost, 0
        else:
            worse_in_a_row += 1
            if worse_in_a_row == 2:  # past the optimum: stop paying for bigger chunks
                break
    return best_size


def measure_chunk_sizes(model: LoadedModel) -> ChunkSizes:
    on_gpu = model.device.type == "cuda"
    return ChunkSizes(
        grad=_best(model, GPU_GRAD_CANDIDATES if on_gpu else GRAD_CANDIDATES, True),
        forward=_best(model, GPU_FORWARD_CANDIDATES if on_gpu else FORWARD_CANDIDATES, False),
    )


def chunk_sizes_for(model: LoadedModel, use_disk_cache: bool = True) -> ChunkSizes:
    """The measured chunk sizes for `model`, measuring on first use."""
    key = _key(model)
    with _lock:
        if key in _cache:
            return _cache[key]
        path = _cache_file()
        stored = {}
        if use_disk_cache and path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                stored = {}
        if key in stored:
            sizes = ChunkSizes(**stored[key])
        else:
            sizes = measure_chunk_sizes(model)
            if use_disk_cache:
                stored[key] = {"grad": sizes.grad, "forward": sizes.forward}
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(stored, indent=1))
                except OSError:
                    pass  # a read-only home only costs a re-measure next process
        _cache[key] = sizes
        return sizes


def configured_chunk_sizes(model: LoadedModel, grad: int = 0, forward: int = 0) -> ChunkSizes:
    """The configured sizes; a 0 means "measure it" (and only then is anything measured)."""
    measured = chunk_sizes_for(model) if not (grad and forward) else None
    return ChunkSizes(grad=grad or measured.grad, forward=forward or measured.forward)
