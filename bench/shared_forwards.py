"""Forward-only methods for the top-3 classes against the top-1 class: the masked forwards are
shared across a request's targets (attribution/executor.py), so top-3 should cost about top-1."""

from __future__ import annotations

import dataclasses

from bench import contenders as c
from bench.progress import log
from bench.report import Table, at_most, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from bench.workload import Workload, reference_workload
from saliency.attribution.executor import ChunkExecutor
from saliency.attribution.registry import get_method, make_params

SUMMARY = "RISE and occlusion: top-3 targets vs top-1 (forward samples shared across targets)"


def _unshared(w: Workload, ex: ChunkExecutor, method: str, targets, **params) -> list:
    """Top-k as before sharing: the same tasks with their share keys removed."""
    p = make_params(method, **params)
    tasks = [get_method(method).plan(w.model, w.x, t, p) for t in targets]
    for task in tasks:
        task.plan.streams = [dataclasses.replace(s, share_key=None) for s in task.streams]
    return ex.run(tasks)


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    ex = c.executor(w)
    top1, top3 = [w.target], list(w.classes[:3])
    cases = {
        "rise": {"n_masks": settings.pick(2000, 200)},
        "occlusion": {},  # window 32, stride 16: 170 forwards at 224x224
    }
    repeats = settings.pick(3, 1)
    tables = []
    for method, params in cases.items():
        log(f"  {method} {params or '(defaults)'}: top-1, top-3, top-3 unshared ({repeats} interleaved repeats)")
        one, three, unshared = "top-1", "top-3 (shared)", "top-3 unshared (as before)"
        timings = interleaved(
            {
                one: lambda m=method, p=params: c.ours_deep(w, ex, m, top1, **p),
                three: lambda m=method, p=params: c.ours_deep(w, ex, m, top3, **p),
                unshared: lambda m=method, p=params: _unshared(w, ex, m, top3, **p),
            },
            repeats,
            warmup=0,
            sync=w.sync,
        )
        # Parity: the shared top-3 maps are the ones each target gets alone.
        shared_maps = c.ours_deep(w, ex, method, top3, **params)
        alone = [c.ours_deep(w, ex, method, [t], **params)[0] for t in top3]
        differ = max(
            float((a.map - b.map).abs().max() / b.map.abs().max()) for a, b in zip(shared_maps, alone, strict=True)
        )
        tables.append(
            Table(
                f"{method}: top-3 vs top-1 {params or '(defaults)'}",
                "ms",
                one,
                "t / t(top-1)",
                time_rows(timings, {three: at_most(1.2, "<= 1.2 x top-1")}),
                [
                    f"top-3 maps against three top-1 calls: max |difference| / max |map| = {differ:.1e} "
                    "(0 where the model call is deterministic, as on the CPU)",
                    f"forward chunk {ex.chunk_sizes.forward}; the unshared row is the same tasks "
                    "without share keys (the cost before sharing)",
                ],
            )
        )
    return tables
