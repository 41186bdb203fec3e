"""What an admitted request holds, and the service's memory budget.

A request is admitted before any work is done for it: the backend estimates when it could
finish and reserves its deep samples (so a burst that arrives at once is not admitted on one
empty queue), and the servicer reserves the bytes it will hold (the decoded picture kept for
overlays, the maps and overlays of the response, the deep methods' per-task state). Both are
handed back by `Admission.close()`, which the servicer calls on every path; `queued()` hands
the sample reservation over to the executor's queue once the samples are submitted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from saliency.errors import ResourceExhausted


class MemoryBudget:
    """Bytes reserved by admitted requests against one limit (thread-safe)."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def reserved(self) -> int:
        with self._lock:
            return self._reserved

    def reserve(self, n: int, field: str) -> Callable[[], None]:
        """Reserve n bytes or raise ResourceExhausted naming `field`; returns the release."""
        with self._lock:
            if self._reserved + n > self.limit_bytes:
                in_use = self._reserved
                raise ResourceExhausted(
                    f"this request needs about {_mib(n)} of memory and {_mib(in_use)} of the "
                    f"service's {_mib(self.limit_bytes)} are held by requests in flight; retry later",
                    field,
                )
            self._reserved += n
        return _once(lambda: self._release(n))

    def _release(self, n: int) -> None:
        with self._lock:
            self._reserved -= n


class Admission:
    """The reservations of one admitted request; every release runs at most once."""

    def __init__(self, deep_samples: int = 0, deep_bytes: int = 0, priority: int = 0):
        self.deep_samples = deep_samples  # deep samples the request will queue
        self.deep_bytes = deep_bytes  # bytes its deep tasks hold outside the model calls
        self.priority = priority  # its prediction pass's priority on the fast pool
        self._on_queued: list[Callable[[], None]] = []
        self._on_close: list[Callable[[], None]] = []

    def until_queued(self, release: Callable[[], None]) -> None:
        """Run `release` when the samples are queued, or at close if they never are."""
        self._on_queued.append(_once(release))

    def until_closed(self, release: Callable[[], None]) -> None:
        self._on_close.append(_once(release))

    def queued(self) -> None:
        for release in self._on_queued:
            release()

    def close(self) -> None:
        self.queued()
        for release in self._on_close:
            release()

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def request_bytes(job, x, picture, map_dtype: str, deep_bytes: int) -> int:
    """Bytes an Explain request holds until it is answered: its model input x [3, H, W], the
    picture overlays are drawn on (uint8 [H0, W0, 3] or None), per map its float32 map, the
    map's wire copy and (with overlays) its PNG at most as large as the raw picture, and its
    deep tasks' state. Rendering's transient arrays are bounded by the prepare pool instead."""
    height, width = x.shape[-2:]
    n_targets = len(job.targets.classes) if job.targets.classes else job.targets.top_k
    n_maps = n_targets * max(len(job.methods), 1)
    wire = 2 if map_dtype == "float16" else 4
    per_map = height * width * (4 + wire) + (picture.nbytes if picture is not None else 0)
    held = x.nbytes + (picture.nbytes if picture is not None else 0)
    return held + n_maps * per_map + deep_bytes


def _once(release: Callable[[], None]) -> Callable[[], None]:
    done = threading.Event()
    lock = threading.Lock()

    def run() -> None:
        with lock:
            if done.is_set():
                return
            done.set()
        release()

    return run


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"
