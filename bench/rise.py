"""RISE: the first call for a mask-bank key (bank built) against later calls (bank cached),
and the bank build alone."""

from __future__ import annotations

from bench import contenders as c
from bench.progress import log
from bench.report import Table, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from bench.workload import reference_workload
from saliency.attribution.methods.rise import MaskBankCache
from saliency.attribution.registry import make_params

SUMMARY = "RISE first call (mask bank built) vs later calls (bank cached)"


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    n_masks = settings.pick(2000, 500)
    repeats = 3  # an odd count: the median is a sample
    ex = c.executor(w)
    height, width = w.x.shape[-2:]
    params = make_params("rise", n_masks=n_masks)
    warm = MaskBankCache()
    warm.get(height, width, params)

    def call(cache: MaskBankCache) -> object:
        return c.ours_deep(w, ex, "rise", [w.target], {"banks": cache}, n_masks=n_masks)

    first, later, build = "first call (fresh cache)", "later call (cached bank)", "bank build alone"
    log(f"  N={n_masks}, forward chunk {ex.chunk_sizes.forward}: {repeats} interleaved repeats")
    timings = interleaved(
        {
            later: lambda: call(warm),
            first: lambda: call(MaskBankCache()),
            build: lambda: MaskBankCache().get(height, width, params),
        },
        repeats,
        warmup=0,  # the model is warm; a warm-up round would cost as much as a repeat
        sync=w.sync,
    )
    extra = timings[first].median - timings[later].median
    build_ms = timings[build].median * 1e3
    return [
        Table(
            f"rise: N={n_masks} masks, 7x7 grid, p=0.5",
            "ms",
            later,
            "t / t(cached)",
            time_rows(timings),
            [
                f"first - later = {extra * 1e3:.0f} ms against a bank build of "
                f"{build_ms:.0f} ms ({build_ms / timings[later].median / 1e3:.1%} of a cached "
                "call): what the cache saves per first call",
                "DESIGN §6 sets no RISE goal",
            ],
        )
    ]
