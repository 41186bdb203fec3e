"""Explain one image in-process: the fast pass for the prediction and cheap maps, then the deep
methods on the chunk executor. The serving backends use the same pieces (`fast_pass`,
`plan_deep`, the executor) with their own queues."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.fast import fast_pass
from saliency.attribution.limits import DEFAULT_LIMITS, Limits
from saliency.attribution.registry import check_supported, get_method, plan_deep
from saliency.attribution.tuning import chunk_sizes_for
from saliency.attribution.types import Attribution, Prediction, Targets
from saliency.models import LoadedModel


@dataclass
class Explanation:
    predictions: list[Prediction]
    targets: tuple[int, ...]
    attributions: list[Attribution]  # fast maps first, then deep maps in request order


class Engine:
    """The attribution engine for one loaded model."""

    def __init__(self, model: LoadedModel, chunk_sizes: ChunkSizes | None = None, limits: Limits = DEFAULT_LIMITS):
        self.model = model
        self.limits = limits
        self._chunk_sizes = chunk_sizes
        self._executor: ChunkExecutor | None = None

    @property
    def executor(self) -> ChunkExecutor:
        """Created on first deep use, so a fast-only caller never pays for chunk measurement."""
        if self._executor is None:
            self._executor = ChunkExecutor(self.model, self._chunk_sizes or chunk_sizes_for(self.model))
        return self._executor

    def explain(
        self,
        x: torch.Tensor,
        targets: Targets,
        methods: Mapping[str, Any],
        progress: Callable[[int, int], None] | None = None,
        n_predictions: int = 5,
    ) -> Explanation:
        """x [3, H, W] normalised; methods {name: validated params} in the order wanted."""
        targets.validate(self.model.spec.num_classes, self.limits.max_targets)
        check_supported(list(methods), self.model.spec)
        infos = {name: get_method(name) for name in methods}
        fast = {n: p for n, p in methods.items() if infos[n].kind == "fast"}
        (result,) = fast_pass(self.model, x[None], [targets], fast, n_predictions)
        deep = [(name, params, t) for name, params in methods.items() if infos[name].kind == "deep" for t in result.targets]
        tasks = plan_deep(self.model, x, deep)
        deep = self.executor.run(tasks, progress) if tasks else []
        return Explanation(result.predictions, result.targets, result.attributions + deep)
