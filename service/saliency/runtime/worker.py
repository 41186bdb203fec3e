"""One model's workers: a fast pool for prediction + cheap maps, and one batched deep worker.

The deep worker thread owns the model's ChunkExecutor: it waits for pending samples, lets a
partial chunk fill for at most `max_batch_delay` (so concurrent requests share model calls),
then runs one chunk. Chunks are small (measured per model), so a fast request never waits
behind a whole IG batch, and a cancelled request's samples are dropped before they are made.

Each thread sets its own torch intra-op thread count when it starts (torch's setting is per
thread for OpenMP): the deep worker keeps the process's count, fast-pool threads use
`fast_threads` (default: one fewer). An OpenMP team led by any thread but the main one sleeps
and wakes on a futex around each of the fast pass's ~400 small parallel regions instead of
spin-waiting (libgomp throttles spinning when it manages more threads than CPUs): a pool
thread's pass is slower than the main thread's whatever its count, so one fewer thread costs
it nothing and leaves a core to the deep worker (bench/threads.py, docs/engine.md).
Everything here is domain types: no protobuf, no gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from opentelemetry import trace

from saliency.attribution.executor import ChunkExecutor, ChunkReport, DeepPlan, DeepTask
from saliency.attribution.fast import FastResult, fast_pass
from saliency.attribution.registry import make_params, plan_deep
from saliency.attribution.tuning import configured_chunk_sizes
from saliency.attribution.types import Targets
from saliency.errors import ResourceExhausted
from saliency.models import LoadedModel
from saliency.models.compiled import compile_for_chunks
from saliency.runtime.admission import ESTIMATE_MARGIN
from saliency.runtime.config import ServiceConfig
from saliency.runtime.fast_pool import BEFORE_DEEP, FastPool
from saliency.runtime.metrics import Metrics
from saliency.runtime.policy import CostTracker

log = logging.getLogger(__name__)


class ModelWorker:
    def __init__(self, model: LoadedModel, config: ServiceConfig, metrics: Metrics, tracer: trace.Tracer):
        self.model = model
        self.tracer = tracer
        self.name = model.spec.name
        self.config = config
        self.metrics = metrics
        sizes = configured_chunk_sizes(model, config.max_chunk, config.max_chunk_forward)
        self.compiled = None
        if config.compile_model != "off":
            self.compiled = compile_for_chunks(model, sizes.forward, config.compile_model)
        compiled_module = self.compiled.module if self.compiled is not None else None
        self.executor = ChunkExecutor(model, sizes, on_chunk=self._record_chunk, compiled=compiled_module)
        # Read once here: every thread sets its own count, so creation order does not matter.
        self._deep_threads = torch.get_num_threads()
        self.fast_threads = config.fast_threads or max(1, self._deep_threads - 1)
        self.fast_pool = FastPool(
            config.fast_workers,
            config.max_fast_queue,
            name=f"fast-{self.name}",
            initializer=lambda: _set_intra_op_threads(self.fast_threads),
            on_depth=self.metrics.queue_depth.labels(self.name, "fast").set,
        )
        self.costs = CostTracker()
        self._reserved_samples = 0  # deep samples of admitted requests not queued yet
        self._reserved_lock = threading.Lock()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._deep_thread = threading.Thread(target=self._deep_loop, name=f"deep-{self.name}", daemon=True)
        self._deep_thread.start()

    # ---- fast pool -------------------------------------------------------------------------

    async def run_fast(
        self, x: torch.Tensor, targets: Targets, methods: Mapping[str, Any], n_predictions: int,
        priority: int = BEFORE_DEEP,
    ) -> FastResult:
        """Prediction and fast maps for one image, on the fast pool (RESOURCE_EXHAUSTED at once
        when its queue is full). Cancelling the await drops the job if it has not started."""
        queued = time.perf_counter()

        def compute() -> FastResult:
            self.metrics.queue_wait.labels(self.name, "fast").observe(time.perf_counter() - queued)
            started = time.perf_counter()
            result = fast_pass(self.model, x[None], [targets], methods, n_predictions)[0]
            self.costs.observe_fast(time.perf_counter() - started)
            self.metrics.batch_samples.labels(self.name, "fast").observe(1)
            self.metrics.batch_requests.labels(self.name, "fast").observe(1)
            return result

        try:
            return await self.fast_pool.run(compute, priority)
        except ResourceExhausted:
            self.metrics.rejected.labels(self.name, "fast_queue_full").inc()
            raise ResourceExhausted(
                f"fast queue of {self.name} is full ({self.config.max_fast_queue} waiting); retry later",
                "model",
            ) from None

    def estimate_seconds(self, deep_samples: int, priority: int) -> float:
        """How long a request arriving now would take: the prediction passes ahead of it and
        its own, then the deep samples queued or admitted ahead of it and its own, with a
        margin for what the measured costs do not see (CPU shared with the passes around it)."""
        fast = self.costs.fast_seconds
        workers = self.config.fast_workers
        fast_wait = fast * (self.fast_pool.waiting_ahead(priority) // workers + 1)
        if not deep_samples:
            return fast_wait
        with self._reserved_lock:
            ahead = self.executor.pending_samples + self._reserved_samples
        return ESTIMATE_MARGIN * (fast_wait + (ahead + deep_samples) * self.costs.sample_seconds)

    def reserve_samples(self, samples: int) -> Callable[[], None]:
        """Count `samples` as queued ahead of later requests until the returned release is
        called: once they are submitted (the executor counts them then) or the request ends."""
        with self._reserved_lock:
            self._reserved_samples += samples

        def release() -> None:
            with self._reserved_lock:
                self._reserved_samples -= samples

        return release

    def warm_up(self) -> None:
        """Measure what admission estimates with, before the first request: a prediction pass
        and a chunk of gradient samples on the deep worker (the first run of each pays for lazy
        initialisation and is not counted)."""
        x = torch.zeros(3, *self.model.spec.input_size)
        methods = {"vanilla": make_params("vanilla")}

        def timed() -> float:
            started = time.perf_counter()
            fast_pass(self.model, x[None], [Targets()], methods, 1)
            return time.perf_counter() - started

        self.fast_pool.submit(timed).result()
        self.costs.observe_fast(self.fast_pool.submit(timed).result())
        steps = max(1, self.executor.chunk_sizes.grad - 2)  # IG adds the input and the baseline
        per_sample = []
        for _ in range(3):
            (task,) = self.plan_deep(x, (0,), {"ig": make_params("ig", n_steps=steps)})
            finished = threading.Event()
            task.on_done = lambda _, done=finished: done.set()
            task.tag = ("warm-up", None)  # (request id, span context), as submit_tasks tags
            self.executor.submit(task)
            self._notify()
            finished.wait(timeout=300)
            per_sample.append(task.compute_seconds / task.n_samples)
        # The fastest of the warm runs: a start-up that shares the CPU must not leave a prior
        # that refuses everything (the running estimate catches up with real load anyway).
        self.costs.reset_samples(min(per_sample[1:]), 1)

    # ---- deep worker -----------------------------------------------------------------------

    async def submit_deep(
        self, x: torch.Tensor, targets: tuple[int, ...], methods: Mapping[str, Any], request_id: str,
        deadline: float | None = None,
    ) -> list[tuple[DeepTask, asyncio.Future]]:
        """Plan every (deep method, target) on a thread and queue it; futures resolve on the
        event loop."""
        tasks = await asyncio.to_thread(self.plan_deep, x, targets, methods)
        return self.submit_tasks(tasks, request_id, deadline)

    def plan_deep(self, x: torch.Tensor, targets: tuple[int, ...], methods: Mapping[str, Any]) -> list[DeepTask]:
        return plan_deep(self.model, x, [(name, params, t) for name, params in methods.items() for t in targets])

    def submit_tasks(
        self, work: list[DeepPlan | DeepTask], request_id: str, deadline: float | None = None
    ) -> list[tuple[DeepTask, asyncio.Future]]:
        """Queue planned work (deep maps, quality curves) under the queue limit; futures
        resolve on the event loop. `deadline` (time.monotonic()): the executor takes none of
        their samples after it (only for tasks this request alone waits for)."""
        tasks = [DeepTask.of(w) for w in work]
        loop = asyncio.get_running_loop()
        needed = sum(t.n_samples for t in tasks)
        pending = self.executor.pending_samples
        if pending + needed > self.config.max_queue_samples:
            self.metrics.rejected.labels(self.name, "deep_queue_full").inc()
            raise ResourceExhausted(
                f"deep queue of {self.name} holds {pending} samples; this request needs {needed} "
                f"and the limit is {self.config.max_queue_samples}; retry later or ask for fewer samples",
                "methods",
            )
        # The request's span context rides along so each batch span can link the requests it served.
        span_context = trace.get_current_span().get_span_context()
        pairs = []
        for task in tasks:
            future = loop.create_future()
            task.tag = (request_id, span_context)
            task.on_done = _resolver(loop, future)
            if deadline is not None:
                task.deadline = deadline
            pairs.append((task, future))
        for task, _ in pairs:
            self.executor.submit(task)
        self._notify()
        return pairs

    def cancel(self, tasks: list[DeepTask]) -> None:
        """Drop tasks nobody waits for any more; their remaining samples are never computed."""
        dropped = 0
        for task in tasks:
            if not task.done:
                task.cancelled = True
                dropped += sum(s.remaining for s in task.streams)
        if dropped:
            self.metrics.dropped_samples.labels(self.name).inc(dropped)
        self._notify()

    def _notify(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    def _deep_loop(self) -> None:
        _set_intra_op_threads(self._deep_threads)  # not whatever a fast thread set last
        torch.set_grad_enabled(False)  # the executor enables grad where a chunk needs it
        while True:
            with self._wakeup:
                while not self._stopping and self.executor.pending_samples == 0:
                    self._wakeup.wait(timeout=1.0)
                if self._stopping:
                    return
                self._wait_for_a_fuller_chunk()
            try:
                self.executor.step()
            except Exception:  # the worker must outlive any bug: log it and keep serving
                log.exception("deep worker of %s: chunk failed", self.name)
            self.metrics.queue_depth.labels(self.name, "deep").set(self.executor.pending_samples)

    def _wait_for_a_fuller_chunk(self) -> None:
        """Hold a partial chunk up to max_batch_delay so concurrent requests share a call."""
        deadline = time.monotonic() + self.config.max_batch_delay_ms / 1000
        full = min(self.executor.chunk_sizes.grad, self.executor.chunk_sizes.forward)
        while self.executor.pending_samples < full and (left := deadline - time.monotonic()) > 0:
            self._wakeup.wait(timeout=left)

    def _record_chunk(self, report: ChunkReport) -> None:
        requests = dict(report.tags)  # request id -> its span context, one entry per request
        self.metrics.batch_samples.labels(self.name, "deep").observe(report.samples)
        self.metrics.batch_requests.labels(self.name, "deep").observe(len(requests))
        end = time.time_ns()
        links = [trace.Link(ctx) for ctx in requests.values() if ctx is not None and ctx.is_valid]
        span = self.tracer.start_span(
            "deep_batch",
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a root: it serves many requests
            links=links,
            start_time=end - int(report.seconds * 1e9),
            attributes={
                "saliency.model": self.name,
                "saliency.samples": report.samples,
                "saliency.requests": len(report.tags),
                "saliency.needs_grad": report.needs_grad,
            },
        )
        span.end(end_time=end)

    def close(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        self._deep_thread.join(timeout=30)
        self.fast_pool.close()


def _set_intra_op_threads(n: int) -> None:
    """Set the calling thread's torch intra-op thread count to n, and only this thread's.

    torch.set_num_threads sets the caller's OpenMP count and also the default every thread
    not yet initialised picks up lazily (on its first parallel op, overwriting what that
    thread set before). So: initialise this thread first, set n, then put the default back
    from a throwaway thread, whose own count is all that step changes. One thread at a time: a
    pool's threads start together, and one reading the default while another has it changed
    would put the changed value back as the default.
    """
    with _thread_count_lock:
        default = torch.get_num_threads()  # initialises this thread from the current default
        torch.set_num_threads(n)
        if n != default:
            restore = threading.Thread(target=lambda: (torch.get_num_threads(), torch.set_num_threads(default)))
            restore.start()
            restore.join()


_thread_count_lock = threading.Lock()


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future):
    """on_done for a DeepTask: hand its result or error to `future` on the event loop."""

    def settle(task: DeepTask) -> None:
        def apply() -> None:
            if future.done():
                return
            if task.cancelled:
                future.cancel()  # whoever cancelled it stopped waiting: nothing to report
            elif task.error is not None:
                future.set_exception(task.error)
            else:
                future.set_result(task.result)

        try:
            loop.call_soon_threadsafe(apply)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    return settle
