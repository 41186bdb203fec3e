"""Child process of the memory benchmark: one IG run, printing its peak memory growth as JSON.

python -m bench.memory_probe --impl ours|captum --n N --chunk K [--forward-chunk F]
    [--threads T] [--device D]

Growth is the peak after the run minus the peak after loading the model and one warm-up
forward+backward: ru_maxrss on the CPU, the CUDA allocator's peak on a GPU. A fresh process
per configuration, because a high-water mark never comes down.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from bench import contenders as c
from bench.workload import reference_workload
from saliency.attribution.executor import ChunkExecutor, ChunkSizes


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_probe")
    parser.add_argument("--impl", choices=("ours", "captum"), required=True)
    parser.add_argument("--n", type=int, required=True, help="IG steps")
    parser.add_argument("--chunk", type=int, default=0, help="samples per model call; 0: none")
    parser.add_argument("--forward-chunk", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    w = reference_workload(args.device)
    c.plain_forward_backward(w)
    if w.model.device.type == "cuda":
        torch.cuda.synchronize(w.model.device)
        torch.cuda.reset_peak_memory_stats(w.model.device)
    baseline = _peak_bytes(w.model.device)
    started = time.perf_counter()
    if args.impl == "ours":
        ex = ChunkExecutor(w.model, ChunkSizes(args.chunk, args.forward_chunk))
        c.ours_deep(w, ex, "ig", [w.target], n_steps=args.n)
    else:
        c.captum_ig(w, args.n, args.chunk or None)
    w.sync()
    seconds = time.perf_counter() - started
    peak = _peak_bytes(w.model.device)
    print(
        json.dumps(
            {
                "baseline_mb": baseline / 2**20,
                "peak_mb": peak / 2**20,
                "growth_mb": (peak - baseline) / 2**20,
                "seconds": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
