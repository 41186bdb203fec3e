"""Side-by-side timing: contenders run interleaved and are summarised by their medians.

Round r runs the contenders in an order rotated by r (A B C, B C A, C A B, ...), so on a
shared, noisy machine a slow spell hits every contender alike and ratios of medians stay
steady where timings taken one contender after another would not.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench.quiet import wait_for_quiet


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of every timed call of one contender."""

    name: str
    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def quartiles(self) -> tuple[float, float]:
        """(q1, q3); both equal the single sample when there is only one."""
        if len(self.seconds) < 2:
            return self.seconds[0], self.seconds[0]
        q1, _, q3 = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q1, q3


def _no_sync() -> None:
    pass


def interleaved(
    contenders: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] = _no_sync,
    before_round: Callable[[], None] = wait_for_quiet,
) -> dict[str, Timing]:
    """Time each contender `repeats` times, interleaved, after `warmup` untimed rounds.

    `sync` waits for queued device work (e.g. torch.cuda.synchronize) inside the timed region;
    `before_round` runs untimed before each timed round (by default: wait out other processes'
    CPU bursts, see bench.quiet).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
            sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        before_round()
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()  # outside the timed region: no contender pays for another's garbage
            started = time.perf_counter()
            contenders[name]()
            sync()
            samples[name].append(time.perf_counter() - started)
    return {name: Timing(name, tuple(s)) for name, s in samples.items()}


def fastest(timings: Mapping[str, Timing]) -> Timing:
    """The contender with the smallest median."""
    return min(timings.values(), key=lambda t: t.median)
