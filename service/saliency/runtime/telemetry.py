"""Per-request bookkeeping that every backend does the same way: the in-flight gauge, how a
request ended (deadline, cancelled), and one span per delivered deep map."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace

from saliency.errors import DeadlineExceeded
from saliency.runtime.metrics import Metrics


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
    span = tracer.start_span(
        f"method {method}",
        start_time=end - int((time.perf_counter() - request_started) * 1e9),
        attributes=attributes,
    )
    span.end(end_time=end)
