"""The deep-method executor: samples from many tasks packed into chunks, one model call each.

A deep method turns (image, target, params) into a DeepPlan: one or more sample streams (a
generator of inputs plus a consumer of the model's outputs on them) and a `finish` that folds
the consumed outputs into an Attribution. The executor runs each plan as a DeepTask, its
record of the run (who waits, the deadline, the outcome, the timings). It packs slices of the
pending streams, in arrival order, into chunks of at most `max_chunk` samples, runs the model
once per chunk (forward-only under `torch.inference_mode` when no stream in it needs an input
gradient) and scatters the outputs back. Streams are consumed in order, so inputs are generated a chunk at a
time and memory stays bounded for any sample count.

Requests are kept apart: a chunk only packs samples of one input shape (`sample_shape`, declared
by the plan, so no input is generated to find it), and a chunk that fails with several tasks in
it is run again task by task, from the inputs already generated, so only the tasks whose
samples cause the failure fail (a wrongly shaped or non-finite input, a generator that raises,
a model call that fails on them); the others get exactly the result they get alone.

Optional stream properties serve methods beyond plain gradients and forwards:
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
- `checkpoint`: sample counts at which the stream's own consumer decides whether it needs more
  (error-targeted IG): a slice never runs past the next one, so a stream that stops there has
  computed nothing it does not use. Until it stops, `n_samples` is its cap.

Forward-only samples are shared across targets: a forward gives the logits of every class, so
streams that declare the same `share_key` (the same perturbations of the same input, e.g. the
RISE masks of one request for three targets) and stand at the same sample are cut into one
slice: its inputs are generated once, by the first of them, run as one row each, and every
stream consumes the same outputs with its own reducer. Each task's result is the one it gets
alone (the same inputs in the same chunks), while top-k costs the model calls of top-1.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from saliency.attribution.types import Attribution
from saliency.errors import DeadlineExceeded
from saliency.instrument.hooks import backward_rule, capture_output, is_backward_rule, is_paired
from saliency.instrument.relevance import RelevanceRules
from saliency.models import LoadedModel


@dataclass
class ChunkOutput:
    """Model outputs for a slice of a stream: logits [n, classes], input grads [n, C, H, W].

    layer: the CAM layer's activations [n, K, h, w] and layer_grads: d(target logit)/d(layer)
    [n, K, h, w], in chunks that held a `capture_layer` stream (grads only in gradient chunks).
    side: what the slice's generator returned beside its inputs (`Samples.side`), or None.
    A shared slice hands the same outputs to every stream sharing it: consumers must not modify
    them in place (forward-only outputs are inference tensors, which refuse it anyway).
    """

    logits: torch.Tensor
    grads: torch.Tensor | None
    layer: torch.Tensor | None = None
    layer_grads: torch.Tensor | None = None
    side: Any = None

    def rows(self, start: int, stop: int) -> ChunkOutput:
        """The outputs of samples [start, stop) of the chunk."""

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop]

        return ChunkOutput(cut(self.logits), cut(self.grads), cut(self.layer), cut(self.layer_grads))


@dataclass(frozen=True)
class Samples:
    """What `make_inputs` returns when its consumers need more than the model's outputs: the
    inputs [n, C, H, W] and `side` (RISE's masks), handed to every consumer of the slice as
    `ChunkOutput.side`. A stream shared across targets needs this: only one stream of a shared
    slice generates it, so a consumer cannot keep what its own generator made."""

    inputs: torch.Tensor
    side: Any = None


class SameTensor:
    """Part of a `share_key`: equal to another exactly when both are views of the same memory
    with the same offset, shape, strides, dtype and device, so the data is the same. It holds
    the tensor: the memory cannot be freed, and its address reused by another input, while a
    key refers to it. (Identity, not content: nothing is hashed on the request path, and the
    tasks of one request are planned from one tensor.)"""

    __slots__ = ("tensor", "_identity")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self._identity = (
            str(tensor.device),
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SameTensor) and self._identity == other._identity

    def __hash__(self) -> int:
        return hash(self._identity)


@dataclass(eq=False)
class SampleStream:
    n_samples: int
    needs_grad: bool
    # [start, stop) -> inputs [stop - start, C, H, W], or Samples(inputs, side)
    make_inputs: Callable[[int, int], torch.Tensor | Samples]
    consume: Callable[[int, ChunkOutput], None]  # (start, outputs for that slice)
    backward_rule: str | RelevanceRules | None = None  # modified backward for this stream's chunks
    capture_layer: bool = False  # its outputs carry the CAM layer's activations (and grads)
    after: SampleStream | None = None  # not started before this stream is fully consumed
    # [C, H, W] of one input sample: chunks only pack streams of one shape. None (unknown)
    # streams pack together and fall back on the per-task re-run if their shapes differ.
    sample_shape: tuple[int, ...] | None = None
    # Forward-only streams with equal keys make equal inputs for equal [start, stop) and ask
    # for the same outputs: the executor runs each such sample once for all of them (the key
    # names the perturbation and its parameters, and the input as a SameTensor).
    share_key: Hashable | None = None
    # cursor -> the next sample count (> cursor) at which the consumer may end the stream by
    # lowering n_samples: no slice extends past it. None: slices are cut by the budget only.
    checkpoint: Callable[[int], int] | None = None
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
        if self.share_key is not None and self.needs_grad:
            raise ValueError("only forward-only streams are shared: a gradient depends on its target")
        if self.sample_shape is not None:
            self.sample_shape = tuple(int(d) for d in self.sample_shape)

    @property
    def remaining(self) -> int:
        return self.n_samples - self.cursor

    @property
    def ready(self) -> bool:
        """Whether its samples may be generated now (its predecessor, if any, is consumed)."""
        return self.after is None or self.after.consumed >= self.after.n_samples

    @property
    def kind(self) -> tuple[bool, str | RelevanceRules | None, tuple[int, ...] | None]:
        """Streams of one kind can share a chunk: (needs_grad, backward_rule, sample_shape).

        Dtype and device are not part of it: every slice is made float32 on the model's device
        before the chunk is put together (the model call needs that anyway)."""
        return self.needs_grad, self.backward_rule, self.sample_shape

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample as the model receives it (float32); 0 when the shape is unknown."""
        return 4 * math.prod(self.sample_shape) if self.sample_shape is not None else 0


_task_ids = itertools.count()


class TaskCancelled(Exception):
    """The task was cancelled (deadline passed, caller gone) before it finished."""


@dataclass(eq=False)
class DeepPlan:
    """What a deep method's planner returns for one (input, target): its sample streams and
    `finish`, which folds their consumed outputs into the map. It says what to compute and
    nothing of who waits for it: the executor runs it as a DeepTask (`DeepTask.of`), once.
    `target` is the class whose logit the gradients are taken of."""

    method: str
    target: int
    streams: list[SampleStream]
    finish: Callable[[], Attribution]
    held_bytes: int | None = None  # the plan's estimate of what the task holds: see memory_bytes

    @property
    def n_samples(self) -> int:
        return sum(s.n_samples for s in self.streams)

    @property
    def sample_bytes(self) -> int:
        """Bytes of its largest input sample as the model receives it (float32)."""
        return max((s.sample_bytes for s in self.streams), default=0)

    @property
    def memory_bytes(self) -> int:
        """Estimated bytes the task holds from plan to result *outside* the chunks it is in.

        Its reducer state, per-task tensors (baselines, reference stacks, segmentations,
        activations, generator states) and what `finish` builds. Not included: the request's
        input, which all its tasks share (a float32 CPU input is held without a copy: count it
        once per request); the chunks, bounded by the executor's chunk size times
        `sample_bytes` whoever's samples fill them; entries of the shared caches, which have
        budgets of their own. An estimate for admission control, not an exact count: the plan
        states it (`held_bytes`); a plan that does not is counted as four input samples.
        """
        return self.held_bytes if self.held_bytes is not None else 4 * self.sample_bytes


@dataclass(eq=False)
class DeepTask:
    """The executor's record of one DeepPlan being run: who is told when it ends (`on_done`,
    `tag`), its deadline, its outcome (`result` / `error` / `cancelled`) and its timings.
    Drivers set `on_done`, `tag` and `deadline` before submitting it."""

    plan: DeepPlan
    on_done: Callable[[DeepTask], None] | None = None
    tag: object = None  # the caller's (e.g. the request id), reported per chunk
    task_id: int = field(default_factory=lambda: next(_task_ids))
    result: Attribution | None = None
    error: BaseException | None = None
    cancelled: bool = False
    compute_seconds: float = 0.0  # its share of the model calls; a shared sample counts in full for each task
    submitted_at: float | None = None  # perf_counter() at submit
    started_at: float | None = None  # perf_counter() when its first chunk started
    # time.monotonic() after which no chunk takes its samples: it fails with DeadlineExceeded
    # ("<deadline_reason> before its map was done"). Only for a task one caller alone waits for.
    deadline: float | None = None
    deadline_reason: str = "the deadline passed"

    @classmethod
    def of(cls, work: DeepPlan | DeepTask) -> DeepTask:
        """A task for a plan (a task is returned as it is)."""
        return work if isinstance(work, DeepTask) else cls(work)

    @property
    def method(self) -> str:
        return self.plan.method

    @property
    def target(self) -> int:
        return self.plan.target

    @property
    def streams(self) -> list[SampleStream]:
        return self.plan.streams

    @property
    def n_samples(self) -> int:
        return self.plan.n_samples

    @property
    def sample_bytes(self) -> int:
        return self.plan.sample_bytes

    @property
    def memory_bytes(self) -> int:
        return self.plan.memory_bytes

    @property
    def queue_seconds(self) -> float:
        if self.submitted_at is None or self.started_at is None:
            return 0.0
        return self.started_at - self.submitted_at

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
    samples: int = 0  # rows of model calls
    tasks_finished: int = 0
    tasks_dropped: int = 0
    tasks_expired: int = 0  # failed at their deadline before their last chunk
    chunks_rerun: int = 0  # chunks that failed with several tasks in them and were re-run per task
    shared_samples: int = 0  # rows that also served other streams: one per extra stream served


@dataclass(eq=False)
class _Slice:
    """Samples [start, stop) of one stream, or of several aligned streams with one share_key:
    the first live one generates the inputs, all consume the outputs."""

    streams: list[tuple[DeepTask, SampleStream]]
    start: int
    stop: int
    inputs: torch.Tensor | None = None
    side: Any = None

    @property
    def n(self) -> int:
        return self.stop - self.start

    def live(self) -> list[tuple[DeepTask, SampleStream]]:
        return [(t, s) for t, s in self.streams if not t.done]


def distinct_samples(streams: Iterable[SampleStream]) -> int:
    """Samples the streams still need computed: aligned streams that share their inputs
    (equal share_key, cursor and n_samples) count once, as the executor runs them."""
    seen: set = set()
    total = 0
    for stream in streams:
        if stream.share_key is not None:
            key = (stream.share_key, stream.cursor, stream.n_samples)
            if key in seen:
                continue
            seen.add(key)
        total += stream.remaining
    return total


def planned_samples(tasks: Iterable[DeepTask]) -> int:
    """Model-call samples of tasks planned together and not yet started (one request's (method,
    target) tasks): a forward-only stream shared across its targets counts once. Use it, not
    the sum of `n_samples`, for queue limits and time estimates."""
    return distinct_samples(s for task in tasks for s in task.streams)


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the storages behind `tensors`, each storage counted once (for memory_bytes)."""
    storages: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            storages[str(t.device), storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


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
        compiled: torch.nn.Module | None = None,
    ):
        self.model = model
        self.chunk_sizes = chunk_sizes
        self.on_chunk = on_chunk
        # A compiled copy of model.module (models/compiled.py) for forward-only calls with no
        # layer capture (a capture needs the eager module's hooks).
        self.compiled = compiled
        self.stats = ExecutorStats()
        self._pending: deque[tuple[DeepTask, SampleStream]] = deque()
        self._lock = threading.RLock()  # on_done callbacks may submit

    def submit(self, work: DeepPlan | DeepTask) -> DeepTask:
        """Queue a plan (or a task a driver prepared for one); returns its task."""
        task = DeepTask.of(work)
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
        """Samples still to run (model-call rows: a sample shared by several streams is one)."""
        with self._lock:
            return distinct_samples(s for _, s in self._pending)

    def run(
        self, work: list[DeepPlan | DeepTask], progress: Callable[[int, int], None] | None = None
    ) -> list[Attribution]:
        """Run plans (or tasks) to completion; raise the first task error. progress(done, total)."""
        tasks = [self.submit(w) for w in work]
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

    def drain(self) -> int:
        """Run chunks until nothing is pending (cancelled and expired tasks leave on the way);
        returns the samples served."""
        total = 0
        while ran := self.step():
            total += ran
        return total

    def step(self) -> int:
        """Run one chunk; return the samples it served (a shared row once per stream it served,
        as the tasks count them; 0 when nothing is pending)."""
        pieces = self._take_chunk()
        if not pieces:
            return 0
        started = time.perf_counter()
        for piece in pieces:
            for task, _ in piece.streams:
                if task.started_at is None:
                    task.started_at = started
        batch = self._generate(pieces)
        if batch:
            try:
                output = self._call(batch)
            except Exception as exc:
                self._isolate(batch, exc)
            else:
                self._scatter(batch, output, time.perf_counter() - started)
        return sum(piece.n * len(piece.streams) for piece in pieces)

    def _generate(self, pieces: list[_Slice]) -> list[_Slice]:
        """Make each slice's inputs [n, C, H, W] with its first live stream; a task whose
        generator fails or makes inputs of another shape than its stream declares fails here,
        alone (the next stream sharing the slice, if any, makes them instead)."""
        batch = []
        for piece in pieces:
            for task, stream in piece.live():
                try:
                    made = stream.make_inputs(piece.start, piece.stop)
                    inputs, side = (made.inputs, made.side) if isinstance(made, Samples) else (made, None)
                    expected = None if stream.sample_shape is None else (piece.n, *stream.sample_shape)
                    if expected is not None and tuple(inputs.shape) != expected:
                        raise ValueError(
                            f"{task.method} made inputs of shape {list(inputs.shape)} for samples "
                            f"[{piece.start}, {piece.stop}), expected {list(expected)}"
                        )
                except Exception as exc:
                    self._fail(task, exc)
                    continue
                piece.inputs, piece.side = inputs, side
                batch.append(piece)
                break
        return [piece for piece in batch if piece.live()]  # a later slice may have failed its tasks

    def _call(self, batch: list[_Slice]) -> ChunkOutput:
        """One model call on the batch's inputs (all of one kind)."""
        needs_grad, rule, _ = batch[0].streams[0][1].kind
        # Plain chunks call _evaluate exactly as they always did; the extras only when used.
        extras: dict = {}
        if rule is not None:
            extras["backward_rule"] = rule
        if any(s.capture_layer for piece in batch for _, s in piece.streams):
            extras["capture_layer"] = True
        # Slices may come from the CPU or the model's device (IG makes its path points there).
        device = self.model.device
        inputs = torch.cat([piece.inputs.to(device, torch.float32) for piece in batch])
        if not bool(torch.isfinite(inputs).all()):
            methods = sorted({t.method for piece in batch for t, _ in piece.live()})
            raise ValueError(f"{', '.join(methods)} made non-finite model inputs (NaN or Inf)")
        # Only gradient rows use their target, and gradient streams are never shared.
        targets = torch.tensor([piece.live()[0][0].target for piece in batch for _ in range(piece.n)])
        return self._evaluate(inputs, targets, needs_grad, **extras)

    def _isolate(self, batch: list[_Slice], exc: Exception) -> None:
        """A failed chunk: with one task, it fails; with several, each task's slices run alone
        (from the inputs already made: generators such as SmoothGrad's noise run once, in order),
        so only the tasks whose samples fail the call fail. A shared slice goes with the task
        that generated it and, failing, fails every task it serves (their inputs are the same)."""
        by_task: dict[int, list[_Slice]] = {}
        for piece in batch:
            by_task.setdefault(id(piece.live()[0][0]), []).append(piece)
        if len(by_task) == 1:
            self._fail_served(batch, exc)
            return
        self.stats.chunks_rerun += 1
        for own in by_task.values():
            own = [piece for piece in own if piece.live()]  # an earlier re-run may have failed them
            if not own:
                continue
            started = time.perf_counter()
            try:
                output = self._call(own)
            except Exception as own_exc:
                self._fail_served(own, own_exc)
            else:
                self._scatter(own, output, time.perf_counter() - started)

    def _fail_served(self, batch: list[_Slice], exc: BaseException) -> None:
        for task in {id(t): t for piece in batch for t, _ in piece.live()}.values():
            self._fail(task, exc)

    def _scatter(self, batch: list[_Slice], output: ChunkOutput, elapsed: float) -> None:
        """Hand each slice its rows of the outputs, once per stream it serves; finish the tasks
        that are complete."""
        total = sum(piece.n for piece in batch)
        offset = 0
        ended: list[DeepTask] = []  # finished or failed here: handed back after the report
        for piece in batch:
            rows = output.rows(offset, offset + piece.n)
            rows.side = piece.side
            served = piece.live()
            for task, stream in served:
                task.compute_seconds += elapsed * piece.n / total
                if task.done:  # failed by another of its slices in this chunk
                    continue
                try:
                    stream.consume(piece.start, rows)
                    stream.consumed += piece.n
                    if all(s.consumed == s.n_samples for s in task.streams):
                        self._finish(task, notify=False)
                        ended.append(task)
                except Exception as exc:
                    if not task.done:
                        self._fail(task, exc, notify=False)
                        ended.append(task)
            self.stats.shared_samples += piece.n * max(0, len(served) - 1)
            offset += piece.n
        self.stats.chunks += 1
        self.stats.samples += total
        try:
            if self.on_chunk:  # before the tasks it finished are handed back: a caller that got
                # its result finds the chunk that made it already reported (metrics, batch spans)
                needs_grad, rule, _ = batch[0].streams[0][1].kind
                tasks = {id(t): t for piece in batch for t, _ in piece.streams}.values()
                self.on_chunk(ChunkReport(total, len(tasks), tuple(t.tag for t in tasks), needs_grad, elapsed, rule))
        finally:  # a report that fails must not leave a finished task's caller waiting
            for task in ended:
                if task.on_done:
                    task.on_done(task)

    def _take_chunk(self) -> list[_Slice]:
        """Slices [start, stop) of ready pending streams, all of one kind (gradient or not,
        backward rule, input shape), FIFO, within the budget; a stream that shares the inputs
        of a slice already taken (same share_key, cursor and length) joins it at no cost."""
        now = time.monotonic()
        with self._lock:
            live = deque()
            for task, stream in self._pending:
                if task.cancelled:
                    self._drop(task)
                elif task.done:
                    continue  # failed by a slice of another of its streams
                elif task.deadline is not None and now >= task.deadline:
                    self.stats.tasks_expired += 1
                    self._fail(task, DeadlineExceeded(
                        f"{task.deadline_reason} before the {task.method} map of class {task.target} was done"
                    ))
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
            pieces: list[_Slice] = []
            shared: dict[tuple, _Slice] = {}
            still_pending = deque()
            for task, stream in live:
                if stream.ready and stream.kind == kind and stream.remaining:
                    key = (stream.share_key, stream.cursor, stream.n_samples, stream.capture_layer)
                    piece = shared.get(key) if stream.share_key is not None else None
                    if piece is not None:  # the same inputs as a slice already taken: no budget
                        piece.streams.append((task, stream))
                        stream.cursor = piece.stop
                    elif budget > 0:
                        n = min(budget, stream.remaining)
                        if stream.checkpoint is not None:
                            n = min(n, max(unit, stream.checkpoint(stream.cursor) - stream.cursor))
                        n -= n % unit
                        n = n or (unit if not pieces else 0)  # a budget under one pair runs one pair
                        if n:
                            piece = _Slice([(task, stream)], stream.cursor, stream.cursor + n)
                            pieces.append(piece)
                            if stream.share_key is not None:
                                shared[key] = piece
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
        if self.compiled is not None and not needs_grad and not capture_layer:
            module = self.compiled
        x = inputs.to(device, torch.float32)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device)
        spec = self.model.spec
        capture = capture_output(module, spec.target_layer, spec.cam_tokens) if capture_layer else nullcontext([])
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

    def _finish(self, task: DeepTask, notify: bool = True) -> None:
        result = task.plan.finish()
        result.stats.setdefault("samples", float(task.n_samples))
        result.stats.setdefault("compute_ms", task.compute_seconds * 1000)
        result.stats.setdefault("queue_ms", task.queue_seconds * 1000)
        task.result = result
        self.stats.tasks_finished += 1
        if notify and task.on_done:
            task.on_done(task)

    def _fail(self, task: DeepTask, exc: BaseException, notify: bool = True) -> None:
        if task.done:
            return
        task.error = exc
        with self._lock:
            self._pending = deque(p for p in self._pending if p[0] is not task)
        if notify and task.on_done:
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
