"""Child process of the memory benchmark: one IG run, printing its peak memory growth as JSON.

python -m bench.memory_probe --impl ours|captum --n N --chunk K [--forward-chunk F]
    [--threads T] [--device D]

Growth is the peak during the run minus the resident size after loading the model and one
warm-up forward+backward: on the CPU the kernel's peak RSS of this process (VmHWM), reset to the
current RSS after the warm-up; on a GPU the CUDA allocator's peak, reset likewise. A fresh
process per configuration keeps every run's high-water mark its own.

Not ru_maxrss: Linux carries it over exec from the parent's address space when the parent
spawns with vfork (as Python's subprocess does), so a child of a large benchmark process
would report the parent's peak.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench import contenders as c
from bench.workload import reference_workload
from saliency.attribution.executor import ChunkExecutor, ChunkSizes


def _status_bytes(field: str) -> int:
    """A size field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak(device: torch.device) -> int:
    """Restart the high-water mark at the current usage; return that usage in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to VmRSS (Linux >= 4.0)
    return _status_bytes("VmRSS")


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status_bytes("VmHWM")


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
    baseline = _reset_peak(w.model.device)
    started = time.perf_counter()
    if args.impl == "ours":
        ex = ChunkExecutor(w.model, ChunkSizes(args.chunk, args.forward_chunk))
        c.ours_deep(w, ex, "ig", [w.target], n_steps=args.n)
    else:
        c.captum_ig(w, args.n, args.chunk or None)
    w.sync()
    seconds = time.perf_counter() - started
    peak = _peak(w.model.device)
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
