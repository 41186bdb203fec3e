"""A thread-safe LRU of tensors under a byte budget: GradientSHAP reference sets and superpixel
segmentations cost a build that requests share.

Each key is built once even when several workers ask at the same moment (the others wait for
that build and get its value), while builds of different keys run side by side: a lock held
across every build would serialise all workers behind the slowest one.

No entry is ever held over the budget. A value larger than the whole budget is returned to
the callers of that build (the one that built it and those that were waiting on it) but not
stored, and nothing is evicted for it; a later caller builds it again. So concurrent callers
share one copy, and sequential callers each pay the build and hold their copy only while they
use it: the budget bounds what the cache keeps, not what callers hold.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


def held_bytes(value: torch.Tensor) -> int:
    """Bytes kept alive by `value`: its whole storage (a view may hold much more than it shows)."""
    return max(value.nbytes, value.untyped_storage().nbytes())


class _Build:
    """One build in flight: the callers waiting on it get its value, stored or not."""

    def __init__(self) -> None:
        self.finished = threading.Event()
        self.value: torch.Tensor | None = None  # None after a failed build
        self.waiting = 0


class TensorCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.builds = 0  # how many times a value was built (cache misses)
        self.nbytes = 0  # bytes of the stored values, always <= max_bytes
        self._values: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._building: dict[Hashable, _Build] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def waiting(self, key: Hashable) -> int:
        """How many callers are waiting on the build of `key` in flight (0 when none)."""
        with self._lock:
            build = self._building.get(key)
            return 0 if build is None else build.waiting

    def get_or_build(self, key: Hashable, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached value of `key`, built with `build()` on a miss (shared: do not modify it)."""
        while True:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    return self._values[key]
                in_flight = self._building.get(key)
                if in_flight is None:
                    mine = self._building[key] = _Build()
                    break
                in_flight.waiting += 1
            in_flight.finished.wait()  # another worker is building it
            if in_flight.value is not None:
                return in_flight.value
            # Its build failed: look again (the next caller builds).
        try:
            value = build()
            with self._lock:
                self.builds += 1
                self._store(key, value)
            mine.value = value
            return value
        finally:
            with self._lock:
                del self._building[key]
            mine.finished.set()

    def _store(self, key: Hashable, value: torch.Tensor) -> None:
        """Keep `value` if it fits the budget at all, evicting the least recently used."""
        size = held_bytes(value)
        if size > self.max_bytes:
            return  # never held: evicting everything else would not make it fit
        while self.nbytes + size > self.max_bytes:
            _, old = self._values.popitem(last=False)
            self.nbytes -= held_bytes(old)
        self._values[key] = value
        self.nbytes += size
