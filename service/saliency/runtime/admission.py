"""What an admitted request holds, and the service's memory budget.

A request is admitted before any work is done for it: the backend estimates when it could
finish and reserves its deep samples (so a burst that arrives at once is not admitted on one
empty queue), and the servicer reserves the bytes it will hold (the decoded picture kept for
overlays, the maps and overlays of the response, the deep methods' per-task state). Both are
handed back by `Admission.close()`, which the servicer calls on every path; `queued()` hands
the sample reservation over to the executor's queue once the samples are submitted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import torch

from saliency.attribution.registry import get_method, split_by_kind
from saliency.errors import ResourceExhausted

# Estimates of when a request could finish are multiplied by this: the measured costs do not
# see the CPU the passes around them take.
ESTIMATE_MARGIN = 1.5


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


def maps_in_response(job, fast_only: bool = False) -> int:
    """At most how many maps a job's response carries: one per (method, target); with
    `fast_only`, those of its fast methods (what ExplainStream's first message carries)."""
    n_targets = len(job.targets.classes) if job.targets.classes else job.targets.top_k
    methods = split_by_kind(job.methods)[0] if fast_only else job.methods
    return n_targets * max(len(methods), 1)


def request_bytes(job, x, held_bytes: int, response_bytes_per_map: int, deep_bytes: int) -> int:
    """Bytes an Explain request holds until it is answered: its model input x [3, H, W], what
    the caller keeps for the answer (`held_bytes`: the picture overlays are drawn on), per map
    the float32 map [H, W] the backend returns and what it adds to the response (its wire copy
    and overlay PNG), and its deep tasks' state. Rendering's transient arrays are bounded by the
    prepare pool instead."""
    height, width = x.shape[-2:]
    per_map = height * width * 4 + response_bytes_per_map
    return x.nbytes + held_bytes + maps_in_response(job) * per_map + deep_bytes


class DeepCosts:
    """(deep samples, bytes of per-task state) a request will queue, for admission: planned
    (no heavy work) for a blank input of the model's size on a thread, and remembered per
    (model, targets, methods and parameters, policy), so a repeated request is admitted with a
    look-up. A plan for class 0 costs what any class's does; samples are each method's
    registered count (superpixel methods: their n_samples bound); a latency budget fits its
    deep work to the budget itself."""

    def __init__(self, entries: int = 1024):
        self.entries = entries
        self._costs: dict[tuple, tuple[int, int]] = {}

    async def of(self, model, targets, deep: dict[str, Any], policy: Any) -> tuple[int, int]:
        """`model`: the LoadedModel the deep methods plan for."""
        key = _cost_key(model.spec.name, targets, deep, policy)
        cost = self._costs.get(key) if key is not None else None
        if cost is None:
            cost = await asyncio.to_thread(_plan_cost, model, targets, deep, policy)
            if key is not None:
                if len(self._costs) >= self.entries:
                    self._costs.pop(next(iter(self._costs)))
                self._costs[key] = cost
        return cost


def _plan_cost(model, targets, deep: dict[str, Any], policy: Any) -> tuple[int, int]:
    if not deep or (policy is not None and policy.latency_budget_ms):
        return 0, 0
    x = torch.zeros(3, *model.spec.input_size)
    n_targets = len(targets.classes) if targets.classes else targets.top_k
    samples = state = 0
    for name, params in deep.items():
        info = get_method(name)
        task = info.plan(model, x, 0, params)
        samples += info.sample_count(params, task=task)  # the registered count, else the plan's
        state += task.memory_bytes
    return n_targets * samples, n_targets * state


def _cost_key(model: str, targets, deep: dict[str, Any], policy: Any) -> tuple | None:
    """A key for a request's cost, or None when its parameters hold tensors (a custom baseline
    or reference stack: hashed by identity, they would never hit and would keep their tensors
    alive) or cannot be hashed."""

    def holds_tensor(value: Any) -> bool:
        if isinstance(value, (tuple, list)):
            return any(holds_tensor(v) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return any(holds_tensor(getattr(value, f.name)) for f in dataclasses.fields(value))
        return isinstance(value, torch.Tensor)

    if any(holds_tensor(params) for params in deep.values()):
        return None
    key = (model, targets, tuple(deep.items()), policy)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def overloaded(model: str, estimate: float, timeout: float, samples: int) -> ResourceExhausted:
    """The refusal of a request the work ahead would keep past its deadline."""
    work = f"its {samples} deep samples behind the work queued ahead" if samples else "the queue ahead"
    return ResourceExhausted(
        f"{model} would take about {estimate:.2f} s to serve this request ({work}), longer than its "
        f"deadline of {timeout:.2f} s; retry later, with a longer deadline or fewer samples",
        "methods" if samples else "model",
    )


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
