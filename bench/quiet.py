"""How busy the machine is with other work, and a bounded wait for it to calm down.

On a shared machine another process's burst can make every call several times slower (with two
OpenMP threads per process on two cores, barrier waits multiply the cost of small ops). Before
each interleaved round the timer checks, while this process sleeps, how much CPU the rest of
the machine uses (/proc/stat); while that is above THRESHOLD it waits, at most MAX_WAIT_S per
round and MAX_TOTAL_WAIT_S in all, so bursts are skipped rather than averaged in. Where
/proc/stat is absent nothing waits.
"""

from __future__ import annotations

import os
import time

from bench.progress import log

THRESHOLD = 0.15  # fraction of all CPUs busy while we sleep: above it, wait
MAX_WAIT_S = 30.0  # per round: a long burst costs at most this, then timing goes on
# per process: on a machine that is never quiet, stop waiting (BENCH_MAX_TOTAL_WAIT_S overrides)
MAX_TOTAL_WAIT_S = float(os.environ.get("BENCH_MAX_TOTAL_WAIT_S", "180"))
RECHECK_S = 2.0  # a round within this long of a quiet check skips the check
WINDOW_S = 0.2  # how long one check samples (/proc/stat counts 10 ms ticks)
_state = {"waited": 0.0, "quiet_at": float("-inf")}


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs since boot."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def busy_fraction(window_s: float = WINDOW_S) -> float | None:
    """Fraction of all CPUs busy during the next `window_s`, while this process sleeps."""
    first = _cpu_ticks()
    if first is None:
        return None
    time.sleep(window_s)
    second = _cpu_ticks()
    total = second[1] - first[1]
    return (second[0] - first[0]) / total if total > 0 else 0.0


def wait_for_quiet() -> None:
    """Sleep until the rest of the machine is nearly idle, or MAX_WAIT_S has passed."""
    started = time.perf_counter()
    if started - _state["quiet_at"] < RECHECK_S or _state["waited"] >= MAX_TOTAL_WAIT_S:
        return
    announced = False
    while (busy := busy_fraction()) is not None and busy > THRESHOLD:
        waited = time.perf_counter() - started
        if waited > MAX_WAIT_S or _state["waited"] + waited > MAX_TOTAL_WAIT_S:
            log(f"  machine still busy after {waited:.0f}s ({busy:.0%} of CPU): timing anyway")
            break
        if not announced:
            log(f"  machine busy ({busy:.0%} of CPU in use): waiting up to {MAX_WAIT_S:.0f}s")
            announced = True
    now = time.perf_counter()
    _state["quiet_at"] = now
    if announced:
        _state["waited"] += now - started


def seconds_waited() -> float:
    """Seconds spent waiting for other work to finish, in this process so far."""
    return _state["waited"]


def cpu_pressure() -> str:
    """The kernel's CPU pressure averages (/proc/pressure/cpu), for the log; "" without PSI."""
    try:
        with open("/proc/pressure/cpu") as f:
            psi = dict(kv.split("=") for kv in f.readline().split()[1:])
    except (OSError, ValueError):
        return ""
    return f"cpu pressure avg10={psi['avg10']}% avg60={psi['avg60']}%"
