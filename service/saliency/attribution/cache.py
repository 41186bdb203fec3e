"""A thread-safe LRU of tensors under a byte budget: RISE mask banks, GradientSHAP reference
sets and superpixel segmentations all cost a build that requests share.

Each key is built once even when several workers ask at the same moment (the others wait for
that build), while builds of different keys run side by side: a lock held across every build
would serialise all workers behind the slowest one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


class TensorCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.builds = 0  # how many times a value was built (cache misses)
        self._values: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._building: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def get_or_build(self, key: Hashable, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached value of `key`, built with `build()` on a miss (shared: do not modify it)."""
        while True:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    return self._values[key]
                in_flight = self._building.get(key)
                if in_flight is None:
                    in_flight = self._building[key] = threading.Lock()
                    in_flight.acquire()
                    break
            with in_flight:  # another worker is building it: wait, then look again
                pass
        try:
            value = build()
            with self._lock:
                self.builds += 1
                self._values[key] = value
                # Keep the newest even when it alone is over the budget: it is in use.
                while sum(v.nbytes for v in self._values.values()) > self.max_bytes and len(self._values) > 1:
                    self._values.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._building[key]
            in_flight.release()
