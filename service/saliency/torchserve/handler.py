"""TorchServe custom handler: a thin adapter from TorchServe's batch to `saliency`.

This file is an archive's handler as it stands (`saliency archive` packs it; TorchServe finds
the one class defined here), and `handlers/saliency_handler.py` subclasses it for `make models`.

One archive per model, registered twice: `<model>` runs the fast pass and
`<model>-deep` the deep methods; the registration name decides (see
`saliency.torchserve.batch`, which does the work). Each row of a batch is a serialized
`saliency.v1.ExplainRequest` under the row's `body` (or `data`) key; each answer is a serialized
`saliency.v1.HandlerReply`, so one bad row gets its own error and never sinks the batch.

Besides TorchServe's own metrics the handler reports, in Prometheus mode on TorchServe's
metrics address (declared in model_store/metrics.yaml): SaliencyBatchRows (rows per batch),
SaliencyRows{Code} (rows answered, by gRPC status code), SaliencyMethodComputeSeconds{Method}
(per map) and SaliencyChunkSamples (samples per deep model call).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from saliency.models import load_model, load_model_config
from saliency.torchserve.batch import (
    BatchOutcome,
    BatchRunner,
    HandlerSettings,
    RowInput,
    registration,
)

log = logging.getLogger(__name__)


class SaliencyHandler:
    """initialize(context) loads the model once; handle(data, context) answers a batch."""

    def __init__(self) -> None:
        self.runner: BatchRunner | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        """Load the model named in the archive's model-config.yaml, in this registration's mode."""
        base, mode = registration(context.model_name)
        settings = HandlerSettings.from_model_config(context.model_yaml_config, default_model=base)
        gpu = context.system_properties.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        if settings.model_config:
            # A user's model: its config and files were packed into the archive.
            path = Path(context.system_properties["model_dir"]) / settings.model_config
            loaded = load_model_config(path, device)
            if loaded.spec.name != base:
                raise ValueError(f"archive {base}.mar holds model config {loaded.spec.name!r}: rebuild it")
        else:
            loaded = load_model(settings.model, device)
        self.runner = BatchRunner(loaded, mode, settings)
        self.initialized = True
        log.info(
            "saliency handler: %s serves %s (%s) on %s, %d torch threads",
            context.model_name, settings.model, mode, device, torch.get_num_threads(),
        )

    def handle(self, data: list[Any], context: Any) -> list[bytes]:
        """One serialized HandlerReply per row of `data`, in order; never raises for a row."""
        if self.runner is None:
            raise RuntimeError("handle() before initialize()")
        rows = [RowInput.from_torchserve(row, context.get_request_id(i) or "") for i, row in enumerate(data)]
        outcome = self.runner.run(rows)
        try:
            _record(outcome, context.metrics)
        except Exception:  # noqa: BLE001 - metrics must never cost the batch its answers
            log.exception("saliency handler: could not record metrics")
        return outcome.replies


def _record(outcome: BatchOutcome, metrics: Any) -> None:
    """Custom metrics through TorchServe's metrics cache (names declared in metrics.yaml)."""
    if metrics is None:
        return
    # A fresh `dimensions` list every call: TorchServe appends ModelName and Level to it (its
    # default argument is one shared list).
    metrics.add_metric(
        "SaliencyBatchRows", len(outcome.replies), "count", dimensions=[], metric_type=MetricTypes.HISTOGRAM
    )
    for code in sorted(set(outcome.codes)):
        metrics.add_metric(
            "SaliencyRows", outcome.codes.count(code), "count",
            dimensions=[Dimension("Code", str(code))], metric_type=MetricTypes.COUNTER,
        )
    for method, ms in outcome.method_ms:
        metrics.add_metric(
            "SaliencyMethodComputeSeconds", ms / 1000, "s",  # seconds: TorchServe's buckets end at 10
            dimensions=[Dimension("Method", method)], metric_type=MetricTypes.HISTOGRAM,
        )
    for chunk in outcome.chunks:
        metrics.add_metric(
            "SaliencyChunkSamples", chunk.samples, "count", dimensions=[], metric_type=MetricTypes.HISTOGRAM
        )
