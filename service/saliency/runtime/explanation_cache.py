"""The explanation cache of the embedded backend: what was computed for an input, kept in a
byte-budget LRU so that asking again costs no model work (docs/service.md, "Explanation cache").

Two kinds of entry share one budget:
- a prediction: (model, weights digest, input digest) -> logits [num_classes], so a `top_k`
  request resolves its targets and predictions without a forward pass;
- a map: (model, weights digest, input digest, method, canonical params, target) -> the map
  [h, w] at the model's input size and its stats, as the engine returns it. Normalisation,
  map size and overlays are applied after the backend, so they are not part of the key.

Every method is a function of that key: sampling methods draw only from their params' seed,
which has a value (0 unless the request sets one) whether or not it was sent, so a request
without a seed is the request with seed 0. What depends on timing (the latency policy's
adaptive IG rounds and fallbacks) is never cached; embedded.py does not look those up.

Flights: a deep map being computed is awaited by every identical request that arrives
meanwhile instead of being computed again; it is dropped only when all of them have gone, and
a failed or dropped computation is never cached, and a computed one is stored (on a thread)
before its waiters are answered. Waiting holds no worker slot: it is a future on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saliency.attribution.types import Attribution

log = logging.getLogger(__name__)

# What an entry holds beyond its tensor's bytes: the key, the dict slot, the tensor header.
ENTRY_OVERHEAD = 512
# The prefilter samples every SKETCH_STRIDE-th row and column of the input.
SKETCH_STRIDE = 7


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy nobody else holds, made by numpy: a torch copy on a helper thread
    starts an OpenMP team of its own, slow on a busy machine."""
    return torch.from_numpy(np.array(t.detach().to("cpu", torch.float32).numpy(), copy=True))


def _tensor_digest(t: torch.Tensor) -> bytes:
    """SHA-256 of a tensor's dtype, shape and values."""
    a = np.ascontiguousarray(t.detach().cpu().numpy())
    digest = hashlib.sha256(f"{a.dtype}|{a.shape}|".encode())
    digest.update(memoryview(a).cast("B"))
    return digest.digest()


def input_digest(x: torch.Tensor) -> bytes:
    """The decoded model input [3, H, W] as it is keyed: run it off the event loop."""
    return _tensor_digest(x)


def input_sketch(x: torch.Tensor) -> int:
    """A cheap fingerprint (about 5 us) of every SKETCH_STRIDE-th pixel of x [3, H, W]: equal
    inputs have equal sketches, so an unknown sketch is a miss without hashing the whole input."""
    sample = x.detach().cpu().numpy()[..., ::SKETCH_STRIDE, ::SKETCH_STRIDE]  # numpy: no OpenMP on the loop
    return hash((tuple(x.shape), str(x.dtype), sample.tobytes()))


def canonical_params(params: Any) -> Hashable:
    """A method's validated params as a hashable value, equal exactly when the params are: every
    dataclass field (those left out of `==`, such as a custom baseline tensor, too), tensors by
    their digest. TypeError for a value it cannot represent (never cached then)."""
    if params is None:
        return None
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        fields = tuple((f.name, canonical_params(getattr(params, f.name))) for f in dataclasses.fields(params))
        return (type(params).__qualname__, fields)
    if isinstance(params, torch.Tensor):
        return ("tensor", _tensor_digest(params))
    if isinstance(params, np.ndarray):
        return ("array", _tensor_digest(torch.from_numpy(params)))
    if isinstance(params, (tuple, list)):
        return tuple(canonical_params(v) for v in params)
    if isinstance(params, (bool, int, float, str, bytes)):
        return (type(params).__name__, params)  # 1 and 1.0 and True stay apart
    raise TypeError(f"cannot key a parameter of type {type(params).__name__}")


def parse_size(value: Any) -> int:
    """A byte count: an int, or a string such as "64MiB", "1.5 GB", "512k", "0" (ValueError)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        number, unit = value, ""
    else:
        text = str(value).strip()
        split = len(text)
        while split and not (text[split - 1].isdigit() or text[split - 1] == "."):
            split -= 1
        try:
            number = float(text[:split])
        except ValueError:
            raise ValueError(f"{value!r} is not a size (e.g. 67108864, 64MiB, 1GB, 0 = off)") from None
        unit = text[split:].strip().lower()
    if unit not in _UNITS:
        raise ValueError(f"{value!r}: unknown unit {unit!r}; use one of B, KiB, MiB, GiB, KB, MB, GB")
    size = number * _UNITS[unit]
    if not 0 <= size < 2**62 or size != size:
        raise ValueError(f"{value!r} is not a size of 0 bytes or more")
    return int(size)


_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
}


@dataclass(frozen=True)
class CachedMap:
    map: torch.Tensor  # [h, w] float32, a copy nobody else holds
    stats: dict[str, float]


@dataclass(frozen=True)
class CachedPrediction:
    logits: torch.Tensor  # [num_classes]
    sketch: int


class ExplanationCache:
    """Byte-budget LRU over predictions and maps; thread-safe. budget_bytes 0: off (stores
    nothing). An entry over the whole budget is not stored; storing evicts the least recently
    used entries until the total is within the budget again."""

    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes {budget_bytes} is negative")
        self.budget = budget_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._sketches: Counter[tuple[str, int]] = Counter()  # (model, sketch) of predictions
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # ---- keys ----------------------------------------------------------------------------

    @staticmethod
    def prediction_key(model: str, weights: str, digest: bytes) -> Hashable:
        return ("prediction", model, weights, digest)

    @staticmethod
    def map_key(model: str, weights: str, digest: bytes, method: str, params: Any, target: int) -> Hashable | None:
        """None when the params cannot be keyed (then the map is computed, never cached)."""
        try:
            canonical = canonical_params(params)
        except TypeError:
            return None
        return ("map", model, weights, digest, method, canonical, int(target))

    # ---- entries ---------------------------------------------------------------------------

    def may_hold_prediction(self, model: str, sketch: int) -> bool:
        """False: no prediction of an input with this sketch is cached (a sure miss)."""
        with self._lock:
            return self._sketches[(model, sketch)] > 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def get_map(self, key: Hashable, method: str, target: int) -> Attribution | None:
        """A cached map as an Attribution of its own (a copy: callers may change it)."""
        entry = self.get(key)
        if not isinstance(entry, CachedMap):
            return None
        return Attribution(method, target, _copy(entry.map), None, dict(entry.stats), cached=True)

    def put_map(self, key: Hashable, attribution: Attribution) -> None:
        m = _copy(attribution.map)
        stats = {k: float(v) for k, v in attribution.stats.items()}
        self.put(key, CachedMap(m, stats), m.nbytes + 64 * len(stats))

    def put_prediction(self, key: Hashable, logits: torch.Tensor, sketch: int) -> None:
        logits = _copy(logits)
        self.put(key, CachedPrediction(logits, sketch), logits.nbytes)

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        size = nbytes + ENTRY_OVERHEAD
        if not self.enabled or size > self.budget:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._forget(key, *old)
            self._entries[key] = (value, size)
            self._bytes += size
            if isinstance(value, CachedPrediction):
                self._sketches[(key[1], value.sketch)] += 1
            while self._bytes > self.budget:
                oldest, (evicted, evicted_size) = self._entries.popitem(last=False)
                self._forget(oldest, evicted, evicted_size)

    def _forget(self, key: Hashable, value: Any, size: int) -> None:
        self._bytes -= size
        if isinstance(value, CachedPrediction):
            sketch = (key[1], value.sketch)
            self._sketches[sketch] -= 1
            if self._sketches[sketch] <= 0:
                del self._sketches[sketch]


class Flight:
    """One deep map being computed and the requests waiting for it (event loop only)."""

    def __init__(self, key: Hashable, task: Any, future: asyncio.Future, drop: Callable[[], None]):
        self.key = key
        self.task = task  # the executor's DeepTask: its queue and compute seconds
        self.future = future  # its waiters': the result once stored, the error, or cancelled
        self.waiters = 0
        self._drop = drop  # stops the computation (its remaining samples are never made)

    def wait(self) -> asyncio.Future:
        """A future of this waiter's own: cancelling it leaves the computation to the others."""
        self.waiters += 1
        return asyncio.shield(self.future)


class Flights:
    """The deep maps being computed, by cache key (event loop only)."""

    def __init__(self) -> None:
        self._by_key: dict[Hashable, Flight] = {}
        # Stores run here, one at a time: a waiter's answer never queues behind the planning,
        # hashing and look-ups on the loop's default executor.
        self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="cache-store")

    def close(self) -> None:
        self._store_pool.shutdown(wait=False, cancel_futures=True)

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: Hashable) -> Flight | None:
        return self._by_key.get(key)

    def start(
        self,
        key: Hashable,
        task: Any,
        future: asyncio.Future,
        drop: Callable[[], None],
        store: Callable[[Any], None],
    ) -> Flight:
        """Register the computation of `key` (`task`, resolving `future`). A result is kept with
        `store(result)` on a thread (it copies the map: not on the event loop) before the
        waiters get it, so a request arriving after them finds it cached; the flight is gone
        once its waiters are answered."""
        loop = asyncio.get_running_loop()
        answered = loop.create_future()  # what the waiters wait for
        flight = Flight(key, task, answered, drop)
        self._by_key[key] = flight

        def landed(f: asyncio.Future) -> None:
            if answered.done():
                return
            if f.cancelled():
                answered.cancel()
            elif (exc := f.exception()) is not None:  # a failed computation is never stored
                answered.set_exception(exc)
            else:
                try:
                    stored = loop.run_in_executor(self._store_pool, store, f.result())
                except RuntimeError:  # the executor is shut down: answer without keeping it
                    answered.set_result(f.result())
                    return
                stored.add_done_callback(lambda s: answer(s, f.result()))

        def answer(stored: asyncio.Future, result: Any) -> None:
            if not stored.cancelled() and (exc := stored.exception()) is not None:
                log.error("explanation cache: storing a map failed: %r", exc)  # still answered
            if not answered.done():
                answered.set_result(result)

        def gone(f: asyncio.Future) -> None:
            self._forget(flight)
            if not f.cancelled():
                f.exception()  # retrieved even when every waiter has left

        answered.add_done_callback(gone)
        future.add_done_callback(landed)
        return flight

    def _forget(self, flight: Flight) -> None:
        if self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]

    def leave(self, flight: Flight) -> None:
        """One waiter is gone (done, error, deadline, cancelled); the last one drops the
        computation if it has not finished."""
        flight.waiters -= 1
        if flight.waiters > 0 or flight.future.done():
            return
        self._forget(flight)  # nobody joins a computation being dropped
        flight._drop()
