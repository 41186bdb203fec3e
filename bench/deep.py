"""Shared shape of the deep-method benchmarks (IG, SmoothGrad): sweep Captum's chunk knob once,
pick its best size, then time ours (automatic chunk size) side by side with Captum at its
default (no chunking) and at that best size."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from bench.progress import log
from bench.report import Goal, Table, time_rows
from bench.settings import Settings
from bench.timing import fastest, interleaved
from bench.workload import Workload

Job = Callable[[], object]


def sweep_captum(
    w: Workload, settings: Settings, knob: str, sizes: Sequence[int], job_at: Callable[[int], Job]
) -> tuple[int, Table]:
    """Time Captum at each chunk size (interleaved, few repeats); return the best and a table."""
    repeats = settings.pick(2, 1)
    log(f"  sweeping Captum {knob} over {list(sizes)} ({repeats} interleaved repeats)")
    names = {f"captum {knob}={s}": s for s in sizes}
    timings = interleaved(
        {name: job_at(s) for name, s in names.items()}, repeats, warmup=0, sync=w.sync
    )
    best = fastest(timings).name
    table = Table(f"Captum {knob} sweep", "ms", best, "t / t(best)", time_rows(timings))
    return names[best], table


def versus_captum(
    w: Workload,
    settings: Settings,
    title: str,
    jobs: Mapping[str, Job],
    goals: Mapping[str, Goal],
    notes: Sequence[str] = (),
) -> Table:
    """Time `jobs` (the first is ours, the reference) interleaved; ratios are t / t(ours)."""
    repeats = settings.pick(7, 3)
    log(f"  {title}: {repeats} interleaved repeats")
    # --quick skips the warm-up round: the sweep just ran the same code, and the median of
    # three discards a cold first call anyway.
    timings = interleaved(jobs, repeats, warmup=settings.pick(1, 0), sync=w.sync)
    ours = next(iter(jobs))
    return Table(title, "ms", ours, "t / t(ours)", time_rows(timings, goals), list(notes))
