"""RISE: a whole call against making its masks alone (per chunk, as the call makes them)."""

from __future__ import annotations

from bench import contenders as c
from bench.progress import log
from bench.report import Table, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from bench.workload import reference_workload
from saliency.attribution.methods.rise import MaskSampler

SUMMARY = "RISE call vs making its masks alone (masks are made per chunk; there is no bank)"


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    n_masks = settings.pick(2000, 500)
    repeats = 3  # an odd count: the median is a sample
    ex = c.executor(w)
    height, width = w.x.shape[-2:]
    chunk = ex.chunk_sizes.forward

    def masks_alone() -> None:
        sampler = MaskSampler(height, width, n_masks, 7, 0.5, 0)
        for start in range(0, n_masks, chunk):
            sampler.masks(start, min(n_masks, start + chunk))

    call, masks = "rise call", "its masks alone"
    log(f"  N={n_masks}, forward chunk {chunk}: {repeats} interleaved repeats")
    timings = interleaved(
        {call: lambda: c.ours_deep(w, ex, "rise", [w.target], n_masks=n_masks), masks: masks_alone},
        repeats,
        warmup=0,  # the model is warm; a warm-up round would cost as much as a repeat
        sync=w.sync,
    )
    share = timings[masks].median / timings[call].median
    return [
        Table(
            f"rise: N={n_masks} masks, 7x7 grid, p=0.5",
            "ms",
            call,
            "t / t(call)",
            time_rows(timings),
            [f"making the masks is {share:.1%} of a call", "DESIGN §6 sets no RISE goal"],
        )
    ]
