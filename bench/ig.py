"""Integrated Gradients (n=50, Gauss-Legendre, zero baseline): ours with the automatic chunk
size against Captum's IntegratedGradients at its default and at its best internal_batch_size;
and ours at each explicit chunk size."""

from __future__ import annotations

import functools

from bench import contenders as c
from bench.deep import sweep_captum, versus_captum
from bench.progress import log
from bench.report import Table, at_least, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from bench.workload import Workload, reference_workload
from saliency.attribution.tuning import GRAD_CANDIDATES

SUMMARY = "Integrated Gradients n=50 vs Captum (default and best internal_batch_size)"
N_STEPS = 50
CAPTUM_SIZES = (1, 2, 4, 5, 8, 10, 16, 25)
QUICK_CAPTUM_SIZES = (2, 5, 10)


@functools.cache
def captum_best_batch(settings: Settings, n_steps: int = N_STEPS) -> tuple[int, Table]:
    """Captum IG's fastest internal_batch_size here (swept once per process) and the sweep."""
    w = reference_workload(settings.device)
    sizes = settings.pick(CAPTUM_SIZES, QUICK_CAPTUM_SIZES)
    return sweep_captum(
        w,
        settings,
        "internal_batch_size",
        sizes,
        lambda s: lambda: c.captum_ig(w, n_steps, s),
    )


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    auto = c.auto_chunk_sizes(w)
    best, sweep = captum_best_batch(settings)
    ours = f"ours: chunk={auto.grad} (automatic)"
    default = "captum: internal_batch_size=None"
    tuned = f"captum: internal_batch_size={best} (its best)"
    main = versus_captum(
        w,
        settings,
        f"ig: n={N_STEPS}, Gauss-Legendre, zero baseline",
        {
            ours: lambda: c.ours_deep(w, c.executor(w), "ig", [w.target], n_steps=N_STEPS),
            default: lambda: c.captum_ig(w, N_STEPS, None),
            tuned: lambda: c.captum_ig(w, N_STEPS, best),
        },
        {default: at_least(2.0), tuned: at_least(1.1)},
        [
            _parity(w, best),
            "ours also runs the 2 forward-only endpoint samples for the completeness error",
        ],
    )
    return [sweep, main, _ours_per_chunk(w, settings, ours)]


def _ours_per_chunk(w: Workload, settings: Settings, auto_name: str) -> Table:
    sizes = settings.pick(GRAD_CANDIDATES, (2, 8))
    repeats = settings.pick(2, 1)
    log(f"  ours at explicit chunk sizes {list(sizes)} ({repeats} interleaved repeats)")

    def job(size: int | None):
        return lambda: c.ours_deep(w, c.executor(w, size), "ig", [w.target], n_steps=N_STEPS)

    jobs = {auto_name: job(None)} | {f"ours: chunk={s}": job(s) for s in sizes}
    timings = interleaved(jobs, repeats, warmup=0, sync=w.sync)
    return Table(
        f"ig: ours at each explicit chunk size (n={N_STEPS})",
        "ms",
        auto_name,
        "t / t(auto)",
        time_rows(timings),
        ["the automatic size comes from saliency.attribution.tuning (measured once, cached)"],
    )


def _parity(w: Workload, best: int) -> str:
    (ours,) = c.ours_deep(w, c.executor(w), "ig", [w.target], n_steps=N_STEPS)
    captum = c.captum_ig(w, N_STEPS, best)
    return (
        f"parity with Captum: rel err {c.relative_error(ours.raw, captum):.1e}; "
        f"our completeness error {ours.stats['completeness_error']:.1e}"
    )
