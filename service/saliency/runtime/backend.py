"""The backend interface the servicer talks to, and the domain events it yields.

`embedded` (runtime/embedded.py) runs the engine in-process; `torchserve` forwards to the
TorchServe handlers. The servicer converts protobuf to an ExplainJob and events back, and
does not know which backend answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from saliency.attribution.fast import FastResult
from saliency.attribution.types import Attribution, Targets
from saliency.errors import NotFound, Unimplemented
from saliency.models import ModelSpec
from saliency.quality.evaluate import EvaluateOptions, QualityScore
from saliency.quality.sanity import SanityResult
from saliency.runtime.admission import Admission
from saliency.runtime.policy import PolicyDecision, PolicyOptions


@dataclass(frozen=True)
class ExplainJob:
    model: str
    x: torch.Tensor | None  # [3, H, W] normalised, validated; None only while being admitted
    targets: Targets
    methods: dict[str, Any]  # name -> validated params, in request order
    n_predictions: int
    request_id: str
    evaluate: EvaluateOptions | None = None  # set: yield a QualityEvent last
    policy: PolicyOptions | None = None  # latency budget / explain_if
    # Set by whoever admitted the job (and closes it); None: the backend admits it itself.
    admission: Admission | None = None


@dataclass(frozen=True)
class SanityJob:
    """A model-randomisation check of one image (quality/sanity.py), validated."""

    model: str
    x: torch.Tensor  # [3, H, W] normalised
    methods: dict[str, Any]  # name -> validated params
    layers: tuple[str, ...] | None  # None: the model's default checkpoints
    modes: tuple[str, ...]  # cascading and/or independent
    target: int | None  # None: the predicted class
    seed: int


@dataclass(frozen=True)
class SanityOutcome:
    result: SanityResult
    weights_sha256: str  # of the served model, checked unchanged after the run


# Optional capabilities a backend lists in `features`; the servicer refuses requests that need
# one the backend lacks with UNIMPLEMENTED (see `require_feature`).
EVALUATE = "evaluate"  # ExplainJob.evaluate
POLICY = "policy"  # ExplainJob.policy
SANITY_CHECK = "sanity_check"  # Backend.sanity_check


@dataclass(frozen=True)
class FastEvent:
    result: FastResult
    seconds: float  # request start -> fast maps ready


@dataclass(frozen=True)
class DeepEvent:
    attribution: Attribution
    queue_seconds: float
    compute_seconds: float
    # The pool whose queue the map waited in ("deep"), for saliency_queue_wait_seconds; None: none
    # (a cache hit, a policy fallback made by the fast pass).
    pool: str | None = "deep"


@dataclass(frozen=True)
class PolicyEvent:
    """What the explain policy chose and why; after the maps (job.policy set)."""

    decision: PolicyDecision


@dataclass(frozen=True)
class QualityEvent:
    """The quality scores of the delivered maps; last (job.evaluate set)."""

    scores: list[QualityScore]


Event = FastEvent | DeepEvent | PolicyEvent | QualityEvent


class Backend(Protocol):
    """What the servicer calls. A backend that can become unable to serve (a remote one) may
    also define `async def healthy(self) -> bool`; server.py then polls it and reports the
    service NOT_SERVING on grpc.health.v1 while it returns False. A backend that schedules its
    own work may define `async def admit(self, job, timeout) -> Admission`: called before the
    input is decoded (job.x is None), it reserves what the job will queue or raises
    ResourceExhausted at once; the servicer closes the Admission when the call ends."""

    name: str  # the `backend` label of saliency_method_latency_seconds
    models: dict[str, ModelSpec]  # the models served, by name
    # Optional capabilities (EVALUATE, POLICY, SANITY_CHECK); absent means none.
    features: frozenset[str]

    def explain(self, job: ExplainJob, timeout: float) -> AsyncIterator[Event]:
        """Yield one FastEvent, then one DeepEvent per deep map as it completes, then a
        PolicyEvent (job.policy set) and a QualityEvent (job.evaluate set); raise
        DeadlineExceeded after `timeout` seconds. Closing the iterator drops queued work."""
        ...

    async def sanity_check(self, job: SanityJob, timeout: float) -> SanityOutcome:
        """Only with SANITY_CHECK in `features`."""
        ...

    def close(self) -> None: ...


def require_feature(backend: Backend, feature: str, field: str) -> None:
    """Raise Unimplemented naming `field` unless the backend has `feature`."""
    if feature not in getattr(backend, "features", frozenset()):
        raise Unimplemented(
            f"the {backend.name} backend does not support this; the embedded backend does", field
        )


MAX_ECHOED_CHARS = 64  # a client's string quoted back in an error message is cut to this


def clip(text: str, limit: int = MAX_ECHOED_CHARS) -> str:
    """`text` quoted for an error message, cut to `limit` characters with an ellipsis.

    The status message travels in a header: a 1 MB name echoed back exceeds the client's
    metadata limit and the caller sees "Stream removed" instead of the error."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def check_model(backend: Backend, name: str) -> ModelSpec:
    """The spec of a served model, or NotFound naming the ones that are served."""
    if name not in backend.models:
        raise NotFound(
            f"model {clip(name)} is not served here; served models: {', '.join(sorted(backend.models))}",
            "model",
        )
    return backend.models[name]
