"""Cross-request packing: 8 IG requests (different targets) in one executor run against the
same 8 requests run one after another."""

from __future__ import annotations

from bench import contenders as c
from bench.progress import log
from bench.report import Table, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from bench.workload import N_CLASSES, reference_workload

SUMMARY = "8 IG requests packed in one executor run vs one after another"


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    n_steps = settings.pick(50, 8)
    repeats = 3  # an odd count: the median is a sample
    ex = c.executor(w)
    targets = w.classes[:N_CLASSES]

    def packed() -> object:
        return c.ours_deep(w, ex, "ig", targets, n_steps=n_steps)

    def one_by_one() -> object:
        return [c.ours_deep(w, ex, "ig", [t], n_steps=n_steps) for t in targets]

    name = f"{len(targets)} requests packed"
    log(f"  {len(targets)} x IG n={n_steps}, chunk {ex.chunk_sizes.grad}: {repeats} repeats")
    timings = interleaved(
        {name: packed, f"{len(targets)} requests one after another": one_by_one},
        repeats,
        warmup=0,  # the model is warm; a median of three discards a cold first call
        sync=w.sync,
    )
    return [
        Table(
            f"batching: {len(targets)} IG requests, n={n_steps}, top-{len(targets)} classes",
            "ms",
            name,
            "t / t(packed)",
            time_rows(timings),
            [
                "packing saves the partial last chunk of each request and merges the "
                "forward-only endpoint samples; DESIGN §6 sets no goal",
            ],
        )
    ]
