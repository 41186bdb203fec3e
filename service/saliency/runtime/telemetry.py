"""A request's telemetry, recorded once for every backend around `Backend.explain`
(`observed_explain`): the in-flight gauge, how a request ended (deadline, cancelled), latency
per method, queue wait of deep maps, a span for the fast pass and one per delivered deep map."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager

from opentelemetry import trace

from saliency.attribution.registry import split_by_kind
from saliency.errors import DeadlineExceeded
from saliency.runtime.backend import Backend, DeepEvent, Event, ExplainJob, FastEvent
from saliency.runtime.metrics import Metrics


async def observed_explain(
    backend: Backend, job: ExplainJob, timeout: float, metrics: Metrics, tracer: trace.Tracer
) -> AsyncIterator[Event]:
    """`backend.explain(job, timeout)`'s events, unchanged, with the request's telemetry:

    - the in-flight gauge and how the request ended early (`request_in_flight`);
    - saliency_method_latency_seconds per map, from the request's start until the map is
      delivered (the fast maps at the FastEvent);
    - saliency_queue_wait_seconds of each deep map that waited in a queue (`DeepEvent.pool`);
    - a span `fast_pass` until the FastEvent, and `method <name>` per deep map, children of
      the current (request) span.

    Closing the iterator closes the backend's, which drops the request's queued work."""
    started = time.perf_counter()
    started_ns = time.time_ns()
    deadline = time.monotonic() + timeout
    labels = {"model": job.model, "backend": backend.name}
    fast_methods = list(split_by_kind(job.methods)[0])
    with request_in_flight(metrics, job.model, deadline):
        async with aclosing(backend.explain(job, timeout)) as events:
            async for event in events:
                if isinstance(event, FastEvent):
                    span = tracer.start_span("fast_pass", start_time=started_ns, attributes={"methods": fast_methods})
                    span.end()
                    for a in event.result.attributions:
                        metrics.method_latency.labels(method=a.method, **labels).observe(event.seconds)
                elif isinstance(event, DeepEvent):
                    a = event.attribution
                    metrics.method_latency.labels(method=a.method, **labels).observe(time.perf_counter() - started)
                    if event.pool is not None:
                        metrics.queue_wait.labels(job.model, event.pool).observe(event.queue_seconds)
                    samples = a.stats.get("samples")
                    method_span(
                        tracer, a.method, a.target, started, event.queue_seconds, event.compute_seconds,
                        int(samples) if samples is not None else None, cached=a.cached,
                    )
                yield event


@contextmanager
def request_in_flight(metrics: Metrics, model: str, deadline: float | None = None) -> Iterator[None]:
    """Count the request in flight while the body runs, and count how it ended early:
    "deadline" (DeadlineExceeded, or stopped at or after `deadline`, time.monotonic()) or
    "cancelled" (the caller went away before it).

    Safe around `yield`s of an async generator: closing it (GeneratorExit) counts as stopped.
    """
    metrics.inflight.labels(model).inc()
    try:
        yield
    except DeadlineExceeded:
        metrics.rejected.labels(model, "deadline").inc()
        raise
    except (asyncio.CancelledError, GeneratorExit):
        late = deadline is not None and time.monotonic() >= deadline
        metrics.rejected.labels(model, "deadline" if late else "cancelled").inc()
        raise
    finally:
        metrics.inflight.labels(model).dec()


def method_span(
    tracer: trace.Tracer,
    method: str,
    target: int,
    request_started: float,
    queue_seconds: float,
    compute_seconds: float,
    samples: int | None = None,
    cached: bool = False,
) -> None:
    """A child span of the current request span for one deep map, from the request's start
    (perf_counter) until now, with its queue wait and compute time."""
    end = time.time_ns()
    attributes = {
        "saliency.method": method,
        "saliency.target": target,
        "saliency.queue_ms": queue_seconds * 1000,
        "saliency.compute_ms": compute_seconds * 1000,
    }
    if samples is not None:
        attributes["saliency.samples"] = samples
    if cached:
        attributes["saliency.cached"] = True
    span = tracer.start_span(
        f"method {method}",
        start_time=end - int((time.perf_counter() - request_started) * 1e9),
        attributes=attributes,
    )
    span.end(end_time=end)
