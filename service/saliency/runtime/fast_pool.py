"""The fast pool: a few threads that run prediction passes, most urgent first, under a bound.

A job's queue slot is returned by its future's completion, whatever ends it: it ran, it
failed, or its caller stopped waiting (deadline, cancelled call) before a thread took it. A
job nobody waits for any more is never run. Priority lets a call that only wants fast maps
pass the prediction passes of a burst of deep requests (lower numbers go first; FIFO within
a priority).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from saliency.errors import ResourceExhausted

T = TypeVar("T")

# Priorities: a call with fast maps only, then the prediction pass of a call with deep maps.
URGENT = 0
BEFORE_DEEP = 1


@dataclass(order=True)
class _Job:
    priority: int
    sequence: int
    run: Callable[[], Any] = field(compare=False)
    future: Future = field(compare=False)
    taken: bool = field(default=False, compare=False)


class FastPool:
    """`workers` threads, each started with `initializer()`; at most `max_waiting` jobs wait."""

    def __init__(
        self,
        workers: int,
        max_waiting: int,
        name: str,
        initializer: Callable[[], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        self.max_waiting = max_waiting
        self._initializer = initializer
        self._on_depth = on_depth or (lambda depth: None)
        self._heap: list[_Job] = []
        self._waiting = 0  # jobs in the heap that are neither taken nor cancelled
        self._sequence = itertools.count()
        self._ready = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}_{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def waiting(self) -> int:
        with self._ready:
            return self._waiting

    def waiting_ahead(self, priority: int) -> int:
        """Jobs that would run before a new job of `priority`."""
        with self._ready:
            return sum(1 for job in self._heap if job.priority <= priority and not job.taken and not job.future.cancelled())

    def submit(self, run: Callable[[], T], priority: int = BEFORE_DEEP) -> Future:
        """Queue `run`; raise ResourceExhausted at once when `max_waiting` jobs already wait."""
        with self._ready:
            if self._stopping:
                raise RuntimeError("the fast pool is closed")
            if self._waiting >= self.max_waiting:
                raise ResourceExhausted(f"{self._waiting} prediction passes are already waiting", "model")
            job = _Job(priority, next(self._sequence), run, Future())
            heapq.heappush(self._heap, job)
            self._waiting += 1
            self._on_depth(self._waiting)
            self._ready.notify()
        job.future.add_done_callback(lambda _: self._release_if_never_taken(job))
        return job.future

    async def run(self, run: Callable[[], T], priority: int = BEFORE_DEEP) -> T:
        """`submit` and await; cancelling the await cancels the job if no thread took it yet."""
        return await asyncio.wrap_future(self.submit(run, priority))

    def _release_if_never_taken(self, job: _Job) -> None:
        with self._ready:
            if not job.taken:  # cancelled while waiting: the thread that pops it skips it
                job.taken = True
                self._waiting -= 1
                self._on_depth(self._waiting)
            if len(self._heap) > 2 * self.max_waiting + 8:  # drop cancelled entries early
                self._heap = [j for j in self._heap if not j.taken]
                heapq.heapify(self._heap)

    def _take(self) -> _Job | None:
        with self._ready:
            while True:
                while self._heap and self._heap[0].taken:
                    heapq.heappop(self._heap)
                if self._heap:
                    job = heapq.heappop(self._heap)
                    job.taken = True
                    self._waiting -= 1
                    self._on_depth(self._waiting)
                    return job
                if self._stopping:
                    return None
                self._ready.wait()

    def _loop(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while (job := self._take()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled between the pop and here
            try:
                result = job.run()
            except BaseException as exc:  # handed to the caller, never kills the thread
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

    def close(self) -> None:
        """Cancel waiting jobs and stop the threads once they finish the job they hold."""
        with self._ready:
            self._stopping = True
            waiting = [job for job in self._heap if not job.taken]
            self._ready.notify_all()
        for job in waiting:
            job.future.cancel()
        for thread in self._threads:
            thread.join(timeout=30)
