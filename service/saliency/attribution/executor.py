"""The deep-method executor: samples from many tasks packed into chunks, one model call each.

A deep method turns (image, target, params) into a DeepTask: one or more sample streams (a
generator of inputs plus a consumer of the model's outputs on them) and a `finish` that folds
the consumed outputs into an Attribution. The executor packs slices of the pending streams, in
arrival order, into chunks of at most `max_chunk` samples, runs the model once per chunk
(forward-only under `torch.inference_mode` when no stream in it needs an input gradient) and
scatters the outputs back. Streams are consumed in order, so inputs are generated a chunk at a
time and memory stays bounded for any sample count.

Three optional stream properties serve methods beyond plain gradients and forwards:
- `backward_rule` ("guided", "deconvnet", "rescale" or an LRP `RelevanceRules`): the chunk's
  forward runs inside `hooks.backward_rule`, so its input gradient follows the modified rule.
  Chunks are grouped by (needs_grad, backward_rule): a rule never touches another stream's
  samples. "rescale" (DeepLIFT) streams hold (input, reference) pairs as consecutive samples:
  their slices are cut in whole pairs, so rows 2i and 2i + 1 of such a chunk always belong
  together. Under an LRP rule the backward starts from the target logit itself (one-hot times
  logit) and `grads` is the input relevance.
- `capture_layer`: the chunk also returns the model's CAM-layer activations (and, in gradient
  chunks, the target logit's gradient with respect to them) — Grad-CAM inside the executor.
- `after`: the stream is not started before another stream of its task is fully consumed, so
  a method can plan its second phase from the first phase's outputs (Score-CAM's masks come
  from the activations of one forward). Its `n_samples` is an upper bound until then: the
  first phase's consumer may lower it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from saliency.attribution.hooks import backward_rule, capture_output, is_backward_rule, is_paired
from saliency.attribution.relevance import RelevanceRules
from saliency.attribution.types import Attribution
from saliency.models import LoadedModel


@dataclass
class ChunkOutput:
    """Model outputs for a slice of a stream: logits [n, classes], input grads [n, C, H, W].

    layer: the CAM layer's activations [n, K, h, w] and layer_grads: d(target logit)/d(layer)
    [n, K, h, w], in chunks that held a `capture_layer` stream (grads only in gradient chunks).
    """

    logits: torch.Tensor
    grads: torch.Tensor | None
    layer: torch.Tensor | None = None
    layer_grads: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> ChunkOutput:
        """The outputs of samples [start, stop) of the chunk."""

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop]

        return ChunkOutput(cut(self.logits), cut(self.grads), cut(self.layer), cut(self.layer_grads))


@dataclass(eq=False)
class SampleStream:
    n_samples: int
    needs_grad: bool
    make_inputs: Callable[[int, int], torch.Tensor]  # [start, stop) -> [stop - start, C, H, W]
    consume: Callable[[int, ChunkOutput], None]  # (start, outputs for that slice)
    backward_rule: str | RelevanceRules | None = None  # modified backward for this stream's chunks
    capture_layer: bool = False  # its outputs carry the CAM layer's activations (and grads)
    after: SampleStream | None = None  # not started before this stream is fully consumed
    cursor: int = 0  # next sample to generate
    consumed: int = 0  # samples whose outputs were consumed

    def __post_init__(self) -> None:
        if self.backward_rule is not None:
            if not is_backward_rule(self.backward_rule):
                raise ValueError(f"unknown backward rule {self.backward_rule!r}")
            if not self.needs_grad:
                raise ValueError("a backward rule only means something for a gradient stream")
            if is_paired(self.backward_rule) and self.n_samples % 2:
                raise ValueError(f"a {self.backward_rule} stream holds (input, reference) pairs: even n_samples")

    @property
    def remaining(self) -> int:
        return self.n_samples - self.cursor

    @property
    def ready(self) -> bool:
        """Whether its samples may be generated now (its predecessor, if any, is consumed)."""
        return self.after is None or self.after.consumed >= self.after.n_samples

    @property
    def kind(self) -> tuple[bool, str | RelevanceRules | None]:
        """Streams of one kind can share a chunk: (needs_grad, backward_rule)."""
        return self.needs_grad, self.backward_rule


_task_ids = itertools.count()


class TaskCancelled(Exception):
    """The task was cancelled (deadline passed, caller gone) before it finished."""


@dataclass
class DeepTask:
    """One requested map. `target` is the class whose logit the gradients are taken of."""

    method: str
    target: int
    streams: list[SampleStream]
    finish: Callable[[], Attribution]
    on_done: Callable[[DeepTask], None] | None = None
    tag: object = None  # the caller's (e.g. the request id), reported per chunk
    task_id: int = field(default_factory=lambda: next(_task_ids))
    result: Attribution | None = None
    error: BaseException | None = None
    cancelled: bool = False
    compute_seconds: float = 0.0
    submitted_at: float | None = None  # perf_counter() at submit
    started_at: float | None = None  # perf_counter() when its first chunk started

    @property
    def queue_seconds(self) -> float:
        if self.submitted_at is None or self.started_at is None:
            return 0.0
        return self.started_at - self.submitted_at

    @property
    def n_samples(self) -> int:
        return sum(s.n_samples for s in self.streams)

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


@dataclass(frozen=True)
class ChunkSizes:
    """Most samples per model call, with and without an input gradient."""

    grad: int
    forward: int

    def for_kind(self, needs_grad: bool) -> int:
        return self.grad if needs_grad else self.forward


@dataclass(frozen=True)
class ChunkReport:
    """What one model call held: for batching metrics."""

    samples: int
    tasks: int
    tags: tuple  # the tag of each distinct task in the chunk
    needs_grad: bool
    seconds: float
    backward_rule: str | RelevanceRules | None = None


@dataclass
class ExecutorStats:
    chunks: int = 0
    samples: int = 0
    tasks_finished: int = 0
    tasks_dropped: int = 0


class ChunkExecutor:
    """Packs and runs the samples of pending DeepTasks for one model.

    Not thread-safe for concurrent `step` calls: one worker owns a model at a time. `submit`
    may be called from any thread.
    """

    def __init__(
        self,
        model: LoadedModel,
        chunk_sizes: ChunkSizes,
        on_chunk: Callable[[ChunkReport], None] | None = None,
    ):
        self.model = model
        self.chunk_sizes = chunk_sizes
        self.on_chunk = on_chunk
        self.stats = ExecutorStats()
        self._pending: deque[tuple[DeepTask, SampleStream]] = deque()
        self._lock = threading.RLock()  # on_done callbacks may submit

    def submit(self, task: DeepTask) -> DeepTask:
        for i, stream in enumerate(task.streams):
            if stream.after is not None and not any(stream.after is s for s in task.streams[:i]):
                raise ValueError("a stream can only wait for an earlier stream of its own task")
        task.submitted_at = time.perf_counter()
        with self._lock:
            for stream in task.streams:
                self._pending.append((task, stream))
        return task

    @property
    def pending_samples(self) -> int:
        with self._lock:
            return sum(s.remaining for _, s in self._pending)

    def run(self, tasks: list[DeepTask], progress: Callable[[int, int], None] | None = None) -> list[Attribution]:
        """Run `tasks` to completion; raise the first task error. progress(done, total)."""
        for task in tasks:
            self.submit(task)
        done = 0
        while (ran := self.step()) > 0:
            done += ran
            if progress:
                total = sum(t.n_samples for t in tasks)  # a second phase may have shrunk it
                progress(min(done, total), total)
        for task in tasks:
            if task.error is not None:
                raise task.error
        return [task.result for task in tasks]

    def step(self) -> int:
        """Run one chunk; return the number of samples it held (0 when nothing is pending)."""
        pieces = self._take_chunk()
        if not pieces:
            return 0
        needs_grad, rule = pieces[0][1].kind
        # Plain chunks call _evaluate exactly as they always did; the extras only when used.
        extras: dict = {}
        if rule is not None:
            extras["backward_rule"] = rule
        if any(s.capture_layer for _, s, *_ in pieces):
            extras["capture_layer"] = True
        started = time.perf_counter()
        for task, *_ in pieces:
            if task.started_at is None:
                task.started_at = started
        try:
            inputs = torch.cat([s.make_inputs(start, stop) for _, s, start, stop in pieces])
            targets = torch.tensor(
                [t.target for t, _, start, stop in pieces for _ in range(stop - start)]
            )
            output = self._evaluate(inputs, targets, needs_grad, **extras)
        except Exception as exc:  # a failed chunk fails only the tasks that were in it
            for task, *_ in pieces:
                self._fail(task, exc)
            return sum(stop - start for *_, start, stop in pieces)
        elapsed = time.perf_counter() - started
        offset = 0
        for task, stream, start, stop in pieces:
            n = stop - start
            task.compute_seconds += elapsed * n / len(targets)
            if not task.done:
                try:
                    stream.consume(start, output.rows(offset, offset + n))
                    stream.consumed += n
                    if all(s.consumed == s.n_samples for s in task.streams):
                        self._finish(task)
                except Exception as exc:
                    self._fail(task, exc)
            offset += n
        self.stats.chunks += 1
        self.stats.samples += len(targets)
        if self.on_chunk:
            tasks = {id(t): t for t, *_ in pieces}.values()
            self.on_chunk(
                ChunkReport(
                    len(targets), len(tasks), tuple(t.tag for t in tasks), needs_grad, elapsed, rule
                )
            )
        return len(targets)

    def _take_chunk(self) -> list[tuple[DeepTask, SampleStream, int, int]]:
        """Slices [start, stop) of ready pending streams, all of one kind, FIFO, within the budget."""
        with self._lock:
            live = deque()
            for task, stream in self._pending:
                if task.cancelled:
                    self._drop(task)
                elif stream.remaining or not stream.ready:
                    live.append((task, stream))
                elif not task.done and all(s.consumed == s.n_samples for s in task.streams):
                    self._finish(task)  # nothing left to compute (e.g. a zero-sample stream)
            if not live:
                self._pending = live
                return []
            first = next((s for _, s in live if s.ready), None)
            if first is None:
                # Unreachable while predecessors are earlier streams of the same task (checked
                # in submit): a waiting stream's predecessor is pending or consumed.
                for task in {id(t): t for t, _ in live}.values():
                    self._fail(task, RuntimeError("sample stream waits for a stream that never runs"))
                self._pending = deque()
                return []
            kind = first.kind
            budget = self.chunk_sizes.for_kind(kind[0])
            unit = 2 if is_paired(kind[1]) else 1  # paired streams are cut in whole pairs
            pieces, still_pending = [], deque()
            for task, stream in live:
                if budget > 0 and stream.ready and stream.kind == kind and stream.remaining:
                    n = min(budget, stream.remaining)
                    n -= n % unit
                    n = n or (unit if not pieces else 0)  # a budget under one pair runs one pair
                    if n:
                        pieces.append((task, stream, stream.cursor, stream.cursor + n))
                        stream.cursor += n
                        budget -= n
                if stream.remaining or not stream.ready:
                    still_pending.append((task, stream))
            self._pending = still_pending
            return pieces

    def _evaluate(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        needs_grad: bool,
        backward_rule: str | RelevanceRules | None = None,
        capture_layer: bool = False,
    ) -> ChunkOutput:
        """One model call on inputs [n, C, H, W]; gradients are of logit[i, targets[i]] (under
        an LRP rule: the relevance of logit[i, targets[i]], seeded with its value)."""
        module, device = self.model.module, self.model.device
        x = inputs.to(device, torch.float32)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device)
        capture = capture_output(module, self.model.spec.target_layer) if capture_layer else nullcontext([])
        rule = _backward_rule_context(backward_rule)
        if not needs_grad:
            with capture as captured, torch.inference_mode():
                logits = module(x).float()
            return ChunkOutput(logits, None, captured[-1].float() if capture_layer else None)
        x.requires_grad_(True)
        with capture as captured, torch.enable_grad():
            with rule:  # the rule is recorded in the forward's graph; the backward runs outside
                logits = module(x)
            # Samples are independent (eval mode), so the sum's gradient is per-sample.
            picked = logits.gather(1, targets[:, None])
            seed = picked.detach() if isinstance(backward_rule, RelevanceRules) else torch.ones_like(picked)
            layer = captured[-1] if capture_layer else None
            wrt = [x] if layer is None else [x, layer]
            grads = torch.autograd.grad(picked, wrt, seed)
        return ChunkOutput(
            logits.detach().float(),
            grads[0].contiguous(),
            None if layer is None else layer.detach().float(),
            None if layer is None else grads[1].float(),
        )

    def _finish(self, task: DeepTask) -> None:
        result = task.finish()
        result.stats.setdefault("samples", float(task.n_samples))
        result.stats.setdefault("compute_ms", task.compute_seconds * 1000)
        result.stats.setdefault("queue_ms", task.queue_seconds * 1000)
        task.result = result
        self.stats.tasks_finished += 1
        if task.on_done:
            task.on_done(task)

    def _fail(self, task: DeepTask, exc: BaseException) -> None:
        if task.done:
            return
        task.error = exc
        with self._lock:
            self._pending = deque(p for p in self._pending if p[0] is not task)
        if task.on_done:
            task.on_done(task)

    def _drop(self, task: DeepTask) -> None:
        """Forget a cancelled task: its remaining samples are never computed."""
        if task.done:
            return
        task.error = TaskCancelled(f"{task.method} task {task.task_id} was cancelled")
        self.stats.tasks_dropped += 1
        if task.on_done:
            task.on_done(task)


def _backward_rule_context(rule: str | RelevanceRules | None) -> AbstractContextManager:
    return nullcontext() if rule is None else backward_rule(rule)
