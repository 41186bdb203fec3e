"""The backend interface the servicer talks to, and the domain events it yields.

`embedded` (runtime/explainer.py) runs the engine in-process; `torchserve` forwards to the
TorchServe handlers. The servicer converts protobuf to an ExplainJob and events back, and
does not know which backend answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from opentelemetry import trace

from saliency.attribution.fast import FastResult
from saliency.attribution.types import Attribution, Targets
from saliency.errors import NotFound
from saliency.models import ModelSpec
from saliency.runtime.config import BACKENDS, ServiceConfig
from saliency.runtime.metrics import Metrics


@dataclass(frozen=True)
class ExplainJob:
    model: str
    x: torch.Tensor  # [3, H, W] normalised, validated
    targets: Targets
    methods: dict[str, Any]  # name -> validated params, in request order
    n_predictions: int
    request_id: str


@dataclass(frozen=True)
class FastEvent:
    result: FastResult
    seconds: float  # request start -> fast maps ready


@dataclass(frozen=True)
class DeepEvent:
    attribution: Attribution
    queue_seconds: float
    compute_seconds: float


class Backend(Protocol):
    name: str  # the `backend` label of saliency_method_latency_seconds
    models: dict[str, ModelSpec]  # the models served, by name

    def explain(self, job: ExplainJob, timeout: float) -> AsyncIterator[FastEvent | DeepEvent]:
        """Yield one FastEvent, then one DeepEvent per deep map as it completes; raise
        DeadlineExceeded after `timeout` seconds. Closing the iterator drops queued work."""
        ...

    def close(self) -> None: ...


def check_model(backend: Backend, name: str) -> ModelSpec:
    """The spec of a served model, or NotFound naming the ones that are served."""
    if name not in backend.models:
        raise NotFound(
            f"model {name!r} is not served here; served models: {', '.join(sorted(backend.models))}",
            "model",
        )
    return backend.models[name]


def make_backend(config: ServiceConfig, metrics: Metrics, tracer: trace.Tracer) -> Backend:
    """The configured backend, with its models loaded (blocking)."""
    if config.backend == "embedded":
        from saliency.runtime.explainer import Runtime

        return Runtime(config, metrics, tracer)
    if config.backend == "torchserve":
        from saliency.backends.torchserve import TorchServeBackend

        return TorchServeBackend(config, metrics, tracer)
    raise ValueError(f"config backend: {config.backend!r} is not one of {BACKENDS}")
