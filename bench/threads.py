"""The fast pass on the main thread vs on other threads, each in a fresh process.

Why processes: the slowdown is a sticky per-process state. On 2 CPUs the fast pass ran 23 ms
on the main thread and 31-34 ms on any other thread, whether or not main also had an OpenMP
team (docs/engine.md); perf shows the non-main team's threads sleeping on a futex around each
small parallel region instead of spin-waiting, consistent with libgomp's throttled spinning
when it manages more threads than CPUs. So each variant runs in its own process; rounds
alternate the variants (A B C, B C A, ...) and each round's process reports the median of its
calls, so load from other work hits every variant alike.

Run: python -m bench --only threads [--quick]; a child is `python -m bench.threads VARIANT N`.
"""

from __future__ import annotations

import gc
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bench.progress import log
from bench.report import Table, time_rows
from bench.settings import Settings
from bench.timing import Timing

SUMMARY = "fast pass on the main thread vs a pool thread vs a dedicated thread (OpenMP teams)"
MAIN = "main thread only"
VARIANTS = {
    MAIN: "everything on the main thread",
    "pool thread, model warmed on main": "load + warm-up on main (as the service starts), calls on a ThreadPoolExecutor",
    "dedicated thread, model warmed on main": "load + warm-up on main, calls on one long-lived thread",
    "pool thread, main never runs torch": "load, warm-up and calls all on one pool thread",
    "main + pool thread alternating": "both threads run the fast pass, in turns",
    "pool thread, main at 1 OpenMP thread": "main runs torch single-threaded (no team); calls on a pool thread",
    "main thread, 1 OpenMP thread": "no team at all: the fast pass single-threaded, on main",
    "pool thread, 1 OpenMP thread": "no team at all: the fast pass single-threaded, on a pool thread",
}
SINGLE = ("main thread, 1 OpenMP thread", "pool thread, 1 OpenMP thread")


def run(settings: Settings) -> list[Table]:
    rounds, calls = settings.pick(6, 2), settings.pick(10, 6)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for r in range(rounds):
        log(f"  round {r + 1}/{rounds}: {len(names)} processes")
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(_child_median(name, calls, settings.threads))
    timings = {name: Timing(name, tuple(s)) for name, s in samples.items()}
    return [
        Table(
            "threads: fast pass (top-1) by calling thread, one process per variant",
            "ms",
            MAIN,
            "t / t(main)",
            time_rows(timings, notes=VARIANTS),
            [
                f"{rounds} rounds x {calls} calls; a row's value is the median over rounds of each "
                "process's median",
                "torch threads per team: " + str(settings.threads),
            ],
        )
    ]


def _child_median(variant: str, calls: int, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "bench.threads", variant, str(calls), str(threads)],
        check=True,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ).stdout
    return float(out.strip().splitlines()[-1])


# ---- the child ---------------------------------------------------------------------------


class _Dedicated:
    """One long-lived thread running submitted calls in order."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self._jobs.get()
            box.append(fn())
            done.set()

    def call(self, fn: Callable[[], object]) -> object:
        box: list = []
        done = threading.Event()
        self._jobs.put((fn, box, done))
        done.wait()
        return box[0]


def _child(variant: str, calls: int, threads: int) -> float:
    import torch

    from bench import contenders as c
    from bench.quiet import wait_for_quiet
    from bench.workload import reference_workload

    pool = ThreadPoolExecutor(1)
    if variant == "pool thread, main at 1 OpenMP thread":
        torch.set_num_threads(1)  # this thread's OpenMP setting (and the default for new threads)
        pool.submit(torch.set_num_threads, threads).result()  # the pool thread's own setting
    elif variant in SINGLE:
        torch.set_num_threads(1)
        pool.submit(torch.set_num_threads, 1).result()
    else:
        torch.set_num_threads(threads)

    def on_pool(fn: Callable[[], object]) -> object:
        return pool.submit(fn).result()

    if variant == "pool thread, main never runs torch":
        w = on_pool(lambda: reference_workload("cpu"))
    else:
        w = reference_workload("cpu")

    def job() -> object:
        return c.ours_fast(w, 1)

    dedicated = _Dedicated()
    turn = iter(range(10**9))
    call = {
        MAIN: job,
        "pool thread, model warmed on main": lambda: on_pool(job),
        "dedicated thread, model warmed on main": lambda: dedicated.call(job),
        "pool thread, main never runs torch": lambda: on_pool(job),
        "main + pool thread alternating": lambda: job() if next(turn) % 2 else on_pool(job),
        "pool thread, main at 1 OpenMP thread": lambda: on_pool(job),
        "main thread, 1 OpenMP thread": job,
        "pool thread, 1 OpenMP thread": lambda: on_pool(job),
    }[variant]
    for _ in range(3):
        call()
    seconds = []
    for _ in range(calls):
        wait_for_quiet()
        gc.collect()
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


if __name__ == "__main__":
    print(_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
