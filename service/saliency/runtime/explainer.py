"""The embedded backend: the serving flow for one request in this process, in domain types:
fast pass first, then deep maps as they complete (see runtime/backend.py for the interface)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from opentelemetry import trace

from saliency.attribution.executor import TaskCancelled
from saliency.attribution.registry import get_method
from saliency.errors import DeadlineExceeded
from saliency.models import load_model
from saliency.runtime.backend import DeepEvent, ExplainJob, FastEvent, check_model
from saliency.runtime.config import ServiceConfig
from saliency.runtime.metrics import Metrics
from saliency.runtime.worker import ModelWorker

BACKEND = "embedded"


class Runtime:
    """The embedded backend: models loaded in this process, each with its workers."""

    name = BACKEND

    def __init__(self, config: ServiceConfig, metrics: Metrics, tracer: trace.Tracer):
        self.config = config
        self.metrics = metrics
        self.tracer = tracer
        self.workers = {
            name: ModelWorker(load_model(name, config.device), config, metrics, tracer)
            for name in config.models
        }

        self.models = {name: worker.model.spec for name, worker in self.workers.items()}

    def worker(self, name: str) -> ModelWorker:
        check_model(self, name)
        return self.workers[name]

    async def explain(self, job: ExplainJob, timeout: float) -> AsyncIterator[FastEvent | DeepEvent]:
        """Yield the FastEvent, then one DeepEvent per deep map as each completes.

        Raises DeadlineExceeded after `timeout` seconds; queued deep work of this request is
        then dropped, as it is when the caller goes away (the generator is closed).
        """
        worker = self.worker(job.model)
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        fast = {n: p for n, p in job.methods.items() if get_method(n).kind == "fast"}
        deep = {n: p for n, p in job.methods.items() if get_method(n).kind == "deep"}
        labels = {"model": job.model, "backend": BACKEND}
        self.metrics.inflight.labels(job.model).inc()
        pairs = []
        try:
            with self.tracer.start_as_current_span("fast_pass", attributes={"methods": list(fast)}):
                result = await _within(deadline, worker.run_fast(job.x, job.targets, fast, job.n_predictions))
            fast_seconds = time.perf_counter() - started
            for attribution in result.attributions:
                self.metrics.method_latency.labels(method=attribution.method, **labels).observe(fast_seconds)
            if deep:
                pairs = worker.submit_deep(job.x, result.targets, deep, job.request_id)
            yield FastEvent(result, fast_seconds)
            pending = {future: task for task, future in pairs}
            while pending:
                done, _ = await _wait_first(deadline, set(pending))
                for future in done:
                    task = pending.pop(future)
                    attribution = future.result()
                    self.metrics.method_latency.labels(method=task.method, **labels).observe(
                        time.perf_counter() - started
                    )
                    self.metrics.queue_wait.labels(job.model, "deep").observe(task.queue_seconds)
                    self._method_span(task, started)
                    yield DeepEvent(attribution, task.queue_seconds, task.compute_seconds)
        except DeadlineExceeded:
            self.metrics.rejected.labels(job.model, "deadline").inc()
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self.metrics.rejected.labels(job.model, "cancelled").inc()
            raise
        except TaskCancelled as exc:
            raise DeadlineExceeded(str(exc)) from None
        finally:
            worker.cancel([task for task, _ in pairs])
            self.metrics.inflight.labels(job.model).dec()

    def _method_span(self, task, request_started: float) -> None:
        """A child span per deep method, covering its queue wait and compute."""
        end = time.time_ns()
        start = end - int((time.perf_counter() - request_started) * 1e9)
        span = self.tracer.start_span(
            f"method {task.method}",
            start_time=start,
            attributes={
                "saliency.method": task.method,
                "saliency.target": task.target,
                "saliency.samples": task.n_samples,
                "saliency.queue_ms": task.queue_seconds * 1000,
                "saliency.compute_ms": task.compute_seconds * 1000,
            },
        )
        span.end(end_time=end)

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()


async def _within(deadline: float, awaitable):
    left = deadline - time.monotonic()
    try:
        return await asyncio.wait_for(awaitable, timeout=max(left, 0))
    except asyncio.TimeoutError:
        raise DeadlineExceeded("the deadline passed before the prediction was ready") from None


async def _wait_first(deadline: float, futures: set):
    left = deadline - time.monotonic()
    done, rest = await asyncio.wait(futures, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED)
    if not done:
        raise DeadlineExceeded(f"the deadline passed with {len(rest)} map(s) still being computed")
    return done, rest
