"""One TorchServe batch, in saliency's terms: what the TorchServe handler (handler.py) delegates to.

TorchServe hands a handler a list of rows (one per queued request) and wants back a list
exactly as long. Its gRPC API has no per-row status, and an exception in the handler fails
every row of the batch, so nothing here raises for one row: each row is decoded and validated
on its own (with `saliency.codec.convert`, the checks the service itself makes) and answered
with a serialized `saliency.v1.HandlerReply` carrying either its response or its own status.

The archive is registered twice, and the registration name picks the mode:
- `<model>`: the fast pass. Valid rows run through `fast_pass` together (one forward and one
  backward per target rank for the whole batch; images may ask for different targets).
- `<model>-deep`: the deep methods. Every (row, method, target) becomes a DeepTask on one
  ChunkExecutor, so rows with different methods and targets share model calls. A row whose
  deadline passes is cancelled between chunks: its remaining samples are never computed.

Maps go back raw (float32, unnormalised, no overlay): the service applies the caller's output
options itself, so a response is the same whichever backend computed it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import grpc
import torch
from google.protobuf.message import DecodeError

from saliency.attribution.executor import ChunkExecutor, ChunkReport, DeepTask
from saliency.attribution.fast import FastResult, fast_pass
from saliency.attribution.limits import Limits
from saliency.attribution.registry import get_method, plan_deep
from saliency.attribution.tuning import configured_chunk_sizes
from saliency.attribution.types import Attribution, Targets
from saliency.codec import convert, tensors
from saliency.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    SaliencyError,
    from_status,
    status_of,
)
from saliency.imaging import ImageLimits
from saliency.models import LoadedModel
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import torchserve_pb2 as ts_pb

log = logging.getLogger(__name__)

MODES = ("fast", "deep")
DEEP_SUFFIX = "-deep"
# Keys of a row (TorchServe's input map; gRPC PredictionsRequest.input). `body` holds the
# serialized ExplainRequest (REST puts a request body under `body` or `data`).
BODY_KEYS = ("body", "data")
DEADLINE_KEY = "deadline_unix_ms"  # wall-clock deadline, ms since the epoch (same host)
TRACEPARENT_KEY = "traceparent"  # W3C trace context of the service's client span

OK = grpc.StatusCode.OK.value[0]
INTERNAL = grpc.StatusCode.INTERNAL.value[0]
# What the handler sends back: float32 maps as computed; predictions up to the row's count.
RAW_OUTPUT = convert.OutputOptions(map_dtype="float32", normalization="none", include_overlay=False)


def code_for(exc: BaseException) -> int:
    """The gRPC status code (number) of an error: a SaliencyError's own, INTERNAL for anything else."""
    return grpc.StatusCode[status_of(exc)].value[0]


def error_for(code: int, message: str) -> SaliencyError:
    """The SaliencyError a HandlerReply's status code stands for (the inverse of `code_for`)."""
    name = next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return from_status(name, message)


def registration(model_name: str) -> tuple[str, str]:
    """TorchServe model name -> (base name, mode): `m` -> (m, fast), `m-deep` -> (m, deep)."""
    if model_name.endswith(DEEP_SUFFIX):
        return model_name[: -len(DEEP_SUFFIX)], "deep"
    return model_name, "fast"


# ------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class HandlerSettings:
    """The `saliency:` section of an archive's model-config.yaml (see model_store/)."""

    model: str  # the zoo name: saliency.models.load_model(model)
    # A user's model (`saliency archive`): its model config's path inside the archive, loaded
    # with saliency.models.load_model_config instead of the zoo name.
    model_config: str = ""
    max_chunk: int = 0  # deep samples per model call with gradient; 0 = measured at start
    max_chunk_forward: int = 0  # forward-only; 0 = measured
    max_methods: int = 16
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    limits: Limits = field(default_factory=Limits)
    # Per registration (`fast`, `deep`): TorchServe's batchSize, maxBatchDelay, minWorkers and
    # maxWorkers. Rendered into config.properties `models=`, never top-level keys of
    # model-config.yaml: those would apply to both registrations of the archive.
    registrations: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    # model-config.yaml's top-level responseTimeout (TorchServe's, both registrations): the
    # deep handler ends a batch at 90 % of it rather than have its worker restarted.
    response_timeout_s: float | None = None

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any] | None, default_model: str) -> HandlerSettings:
        """Read the `saliency:` section of model-config.yaml (TorchServe's model_yaml_config)."""
        section = dict((config or {}).get("saliency") or {})
        known = {f.name for f in fields(cls)}
        allowed = (known - {"response_timeout_s"}) | {"deep"}  # the timeout is TorchServe's key
        unknown = sorted(set(section) - allowed)
        if unknown:
            raise ValueError(f"model-config.yaml saliency: unknown key(s) {unknown}; known: {sorted(allowed)}")
        deep = dict(section.pop("deep", None) or {})
        values: dict[str, Any] = {"model": default_model, **section, **deep}
        values["limits"] = Limits(**(values.get("limits") or {}))
        timeout = (config or {}).get("responseTimeout")
        values["response_timeout_s"] = float(timeout) if timeout else None
        values["registrations"] = {
            mode: {k: int(v) for k, v in (settings or {}).items()}
            for mode, settings in (values.get("registrations") or {}).items()
        }
        bad_modes = sorted(set(values["registrations"]) - set(MODES))
        if bad_modes:
            raise ValueError(f"model-config.yaml saliency.registrations: {bad_modes} not in {MODES}")
        return cls(**values)

    def properties_models(self, name: str) -> dict[str, dict[str, dict[str, Any]]]:
        """config.properties `models=` entries of archive `<name>.mar`: `<name>`, `<name>-deep`."""
        entries = {}
        for mode in MODES:
            registered = name + (DEEP_SUFFIX if mode == "deep" else "")
            entries[registered] = {
                "1.0": {"defaultVersion": True, "marName": f"{name}.mar", **self.registrations.get(mode, {})}
            }
        return entries


# --------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class RowInput:
    """One row of TorchServe's batch, as it arrived."""

    body: bytes | None
    deadline: float | None = None  # time.time() seconds
    traceparent: str = ""
    torchserve_id: str = ""  # TorchServe's own request id, for the logs

    @classmethod
    def from_torchserve(cls, row: Any, torchserve_id: str = "") -> RowInput:
        """TorchServe's row (a dict of parameter name -> bytes) -> RowInput. Never raises."""
        if not isinstance(row, Mapping):
            return cls(None, torchserve_id=torchserve_id)
        body = next((_as_bytes(row[k]) for k in BODY_KEYS if row.get(k) is not None), None)
        deadline = None
        raw = row.get(DEADLINE_KEY)
        if raw is not None:
            try:
                deadline = float(_as_bytes(raw).decode()) / 1000
            except (UnicodeDecodeError, ValueError):
                deadline = None  # an unreadable deadline means none; the service sets its own
        trace = row.get(TRACEPARENT_KEY)
        traceparent = _as_bytes(trace).decode("ascii", "replace") if trace is not None else ""
        return cls(body, deadline, traceparent[:128], torchserve_id)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()  # TorchServe decodes JSON bodies into objects


@dataclass
class _Row:
    """A row that passed validation, on its way through the batch."""

    index: int
    request_id: str
    x: torch.Tensor  # [3, H, W] normalised
    targets: Targets
    methods: dict[str, Any]
    n_predictions: int
    deadline: float | None
    fast: FastResult | None = None
    tasks: list[DeepTask] = field(default_factory=list)


@dataclass
class BatchOutcome:
    """What a batch produced: one serialized HandlerReply per row, plus what to measure."""

    replies: list[bytes]
    codes: list[int]  # each row's status code
    method_ms: list[tuple[str, float]] = field(default_factory=list)  # (method, compute ms) per map
    chunks: list[ChunkReport] = field(default_factory=list)  # deep model calls
    seconds: float = 0.0


# ------------------------------------------------------------------------------ the batch


class BatchRunner:
    """Answers TorchServe batches for one model in one mode (`fast` or `deep`)."""

    def __init__(self, model: LoadedModel, mode: str, settings: HandlerSettings):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        self.model = model
        self.mode = mode
        self.settings = settings
        self.image_limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.executor: ChunkExecutor | None = None
        self._chunks: list[ChunkReport] = []
        if mode == "deep":
            sizes = configured_chunk_sizes(model, settings.max_chunk, settings.max_chunk_forward)
            self.executor = ChunkExecutor(model, sizes, on_chunk=self._chunks.append)
        # Stop a batch before TorchServe's responseTimeout would kill this worker.
        timeout = settings.response_timeout_s
        self.batch_budget_s = 0.9 * timeout if timeout else None

    def run(self, rows: Sequence[RowInput], clock: Callable[[], float] = time.time) -> BatchOutcome:
        """Answer every row: a list exactly as long as `rows`, whatever happens to each.

        `clock` is the wall clock the rows' deadlines are on (`deadline_unix_ms`).
        """
        started = time.perf_counter()
        replies: list[ts_pb.HandlerReply | None] = [None] * len(rows)
        valid: list[_Row] = []
        for i, row in enumerate(rows):
            try:
                valid.append(self._validate(i, row, clock()))
            except Exception as exc:  # noqa: BLE001 - every failure becomes this row's reply
                replies[i] = self._error_reply(exc, row)
        method_ms: list[tuple[str, float]] = []
        self._chunks.clear()
        try:
            if self.mode == "fast":
                self._run_fast(valid, replies, method_ms, rows)
            else:
                self._run_deep(valid, rows, replies, method_ms, clock)
        except Exception as exc:  # a bug: answer the rows still open, keep the worker alive
            log.exception("saliency handler: batch of %d rows failed", len(rows))
            for row in valid:
                if replies[row.index] is None:
                    replies[row.index] = self._error_reply(exc, rows[row.index])
            self._drop_pending(valid)
        seconds = time.perf_counter() - started
        out, codes = [], []
        for reply in replies:
            assert reply is not None, "every row is answered"
            reply.batch_rows = len(rows)
            reply.handler_ms = seconds * 1000
            codes.append(reply.code)
            out.append(reply.SerializeToString())
        return BatchOutcome(out, codes, method_ms, list(self._chunks), seconds)

    # ---- validation ----------------------------------------------------------------------

    def _validate(self, index: int, row: RowInput, now: float) -> _Row:
        """Decode and check one row exactly as the service checks a request."""
        if row.body is None:
            raise InvalidArgument(
                f"no serialized saliency.v1.ExplainRequest under {' or '.join(BODY_KEYS)}", "input"
            )
        request = pb.ExplainRequest()
        try:
            request.ParseFromString(row.body)
        except DecodeError:
            raise InvalidArgument("is not a serialized saliency.v1.ExplainRequest", "body") from None
        spec = self.model.spec
        if request.model != spec.name:
            raise NotFound(f"model {request.model!r} is not served here; this archive serves {spec.name!r}", "model")
        if row.deadline is not None and row.deadline <= now:
            raise DeadlineExceeded("the deadline passed before the batch started")
        request_id = request.request_id
        x, _rgb, targets, methods = convert.request_inputs_from_proto(
            request, spec, self.image_limits, self.settings.limits, self.settings.max_methods
        )
        # Every row reaches the model at its input size (an image is resized to it; a tensor
        # must have it): methods are planned for that shape, and a row of another shape fails
        # here, alone, rather than in a model call it shares with the rest of the batch.
        expected = [3, *spec.input_size]
        if list(x.shape) != expected:
            raise InvalidArgument(
                f"expected {expected} (model {spec.name}'s input size), got {list(x.shape)}; "
                "send an encoded image to have it resized",
                "tensor.shape",
            )
        for i, name in enumerate(methods):
            kind = get_method(name).kind
            if kind != self.mode:
                other = spec.name + (DEEP_SUFFIX if kind == "deep" else "")
                raise InvalidArgument(
                    f"{name} is a {kind} method; this registration computes {self.mode} methods: "
                    f"send it to {other!r}",
                    f"methods[{i}].method",
                )
        options = convert.output_options_from_proto(request.output if request.HasField("output") else None)
        return _Row(index, request_id, x, targets, methods, options.top_predictions, row.deadline)

    # ---- fast ------------------------------------------------------------------------------

    def _run_fast(self, rows: list[_Row], replies: list, method_ms: list, inputs: Sequence[RowInput]) -> None:
        """One fast_pass per group of rows that share input shape and method parameters; a
        group that fails is retried row by row, so only the rows that fail alone fail."""
        for group in _groups(rows, with_methods=True):
            started = time.perf_counter()
            n = max(r.n_predictions for r in group)
            try:
                results = fast_pass(
                    self.model, torch.stack([r.x for r in group]), [r.targets for r in group], group[0].methods, n
                )
            except Exception as exc:  # noqa: BLE001 - answered per row below
                if len(group) == 1:
                    replies[group[0].index] = self._error_reply(exc, inputs[group[0].index])
                else:
                    for row in group:
                        self._run_fast([row], replies, method_ms, inputs)
                continue
            ms = (time.perf_counter() - started) * 1000
            for row, result in zip(group, results):
                result.predictions = result.predictions[: row.n_predictions]
                reply = self._reply(row, result)
                for a in result.attributions:
                    reply.response.attributions.append(self._attribution(a, 0.0, ms))
                    method_ms.append((a.method, ms))
                replies[row.index] = reply

    # ---- deep ------------------------------------------------------------------------------

    def _run_deep(self, rows: list[_Row], inputs: Sequence[RowInput], replies: list, method_ms: list, clock) -> None:
        """Every (row, method, target) on the chunk executor at once. A row's tasks carry its
        deadline (or the batch's responseTimeout budget, whichever comes first): the executor
        drops their samples from the first chunk past it."""
        assert self.executor is not None
        batch_end = time.monotonic() + self.batch_budget_s if self.batch_budget_s is not None else None
        for row, exc in self._resolve_targets([r for r in rows if not r.targets.classes]):
            replies[row.index] = self._error_reply(exc, inputs[row.index])
        planned: list[_Row] = []
        for row in rows:
            if replies[row.index] is not None:
                continue
            targets = row.fast.targets if row.fast is not None else row.targets.classes
            try:
                row.tasks = plan_deep(
                    self.model, row.x, [(name, params, t) for name, params in row.methods.items() for t in targets]
                )
            except Exception as exc:  # noqa: BLE001 - this row's plan failed, not the batch
                replies[row.index] = self._error_reply(exc, inputs[row.index])
                continue
            # The row's wall-clock deadline on the executor's monotonic clock.
            deadline = time.monotonic() + (row.deadline - clock()) if row.deadline is not None else None
            reason = "the deadline passed"
            if batch_end is not None and (deadline is None or batch_end < deadline):
                deadline, reason = batch_end, "the batch ran into TorchServe's responseTimeout"
            for task in row.tasks:
                task.tag = row.request_id or str(row.index)
                task.deadline, task.deadline_reason = deadline, reason
            planned.append(row)
        for row in planned:
            for task in row.tasks:
                self.executor.submit(task)
        self.executor.drain()
        for row in planned:
            replies[row.index] = self._deep_reply(row, inputs[row.index], method_ms)

    def _drop_pending(self, rows: list[_Row]) -> None:
        """After a failed batch, leave nothing of it queued for the next one."""
        if self.executor is None:
            return
        for row in rows:
            for task in row.tasks:
                task.cancelled = True
        try:
            while self.executor.step():
                pass
        except Exception:  # noqa: BLE001 - best effort; the failure is already reported
            log.exception("saliency handler: could not drain the executor")
            self.executor = ChunkExecutor(self.model, self.executor.chunk_sizes, on_chunk=self._chunks.append)

    def _resolve_targets(self, rows: list[_Row]) -> list[tuple[_Row, BaseException]]:
        """top_k rows: a forward-only pass picks their classes (and gives their predictions).
        Returns the rows whose pass failed (retried alone first) with their error."""
        failed = []
        for group in _groups(rows, with_methods=False):
            n = max(r.n_predictions for r in group)
            try:
                results = fast_pass(self.model, torch.stack([r.x for r in group]), [r.targets for r in group], {}, n)
            except Exception as exc:  # noqa: BLE001 - answered per row
                failed += [(group[0], exc)] if len(group) == 1 else [
                    f for row in group for f in self._resolve_targets([row])
                ]
                continue
            for row, result in zip(group, results):
                result.predictions = result.predictions[: row.n_predictions]
                row.fast = result
        return failed

    def _deep_reply(self, row: _Row, row_input: RowInput, method_ms: list) -> ts_pb.HandlerReply:
        failed = next((t for t in row.tasks if t.error is not None and not t.cancelled), None)
        if failed is not None and isinstance(failed.error, DeadlineExceeded):  # expired in the executor
            left = sum(1 for t in row.tasks if t.result is None)
            return self._error_reply(
                DeadlineExceeded(f"{failed.deadline_reason} with {left} map(s) still being computed"), row_input
            )
        if failed is not None:
            return self._error_reply(failed.error, row_input)
        reply = self._reply(row, row.fast)
        for task in row.tasks:
            reply.response.attributions.append(
                self._attribution(task.result, task.queue_seconds * 1000, task.compute_seconds * 1000)
            )
            method_ms.append((task.method, task.compute_seconds * 1000))
        return reply

    # ---- replies ---------------------------------------------------------------------------

    def _reply(self, row: _Row, result: FastResult | None) -> ts_pb.HandlerReply:
        response = pb.ExplainResponse(model=self.model.spec.name, request_id=row.request_id)
        reply = ts_pb.HandlerReply(code=OK)
        if result is not None:
            response.predictions.extend(convert.predictions_to_proto(result.predictions))
            response.targets.extend(result.targets)
            reply.logits.CopyFrom(tensors.tensor_to_proto(result.logits))
        else:
            response.targets.extend(row.targets.classes)
        reply.response.CopyFrom(response)
        return reply

    @staticmethod
    def _attribution(a: Attribution, queue_ms: float, compute_ms: float) -> pb.Attribution:
        return convert.attribution_to_proto(a, RAW_OUTPUT, None, get_method(a.method).signed, queue_ms, compute_ms)

    def _error_reply(self, exc: BaseException, row: RowInput) -> ts_pb.HandlerReply:
        code = code_for(exc)
        if code == INTERNAL:
            log.error(
                "saliency handler: row %s (traceparent %s) failed", row.torchserve_id, row.traceparent,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            message = f"internal error in the TorchServe handler ({type(exc).__name__}); see its model log"
        else:
            message = str(exc)
            log.info(
                "saliency handler: row %s (traceparent %s) answered %d: %s",
                row.torchserve_id, row.traceparent or "-", code, message,
            )
        return ts_pb.HandlerReply(code=code, message=message)


def _groups(rows: list[_Row], with_methods: bool) -> list[list[_Row]]:
    """Rows that can share one fast_pass: same input shape (and the same method parameters)."""
    groups: dict[Any, list[_Row]] = {}
    for row in rows:
        key: Any = tuple(row.x.shape)
        if with_methods:
            key = (key, tuple(row.methods.items()))
        try:
            groups.setdefault(key, []).append(row)
        except TypeError:  # unhashable parameters: a group of its own
            groups[(key[0], id(row))] = [row]
    return list(groups.values())
