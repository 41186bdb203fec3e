"""The embedded backend: the serving flow for one request in this process, in domain types:
fast pass first, then deep maps as they complete (see runtime/backend.py for the interface).

Optional stages, each after the one before:
- policy (runtime/policy.py): after the prediction, `explain_if` may skip the deep maps; a
  latency budget keeps the deep methods that fit, runs fallbacks in a second fast pass, and
  runs IG in adaptive rounds. A PolicyEvent reports the outcome after the maps.
- evaluate (quality/evaluate.py): the delivered maps are scored (perturbation curves on the
  deep executor, the rest on a thread) and a QualityEvent comes last. Requests without
  `evaluate` are scored in the background at `quality_sample_rate`, for the metrics only.

The explanation cache (runtime/explanation_cache.py) answers the prediction and fast maps when
it holds all of them, and each deep map it holds; a deep map being computed for an identical
request is awaited rather than computed again. The policy's fallbacks and adaptive IG rounds
depend on timing and bypass it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from saliency.attribution.executor import DeepTask, TaskCancelled
from saliency.attribution.fast import FastResult
from saliency.attribution.fast import _top_predictions as top_predictions  # the pass's own ranking
from saliency.attribution.registry import get_method, make_params, plan_deep, split_by_kind
from saliency.attribution.types import Attribution, Targets
from saliency.errors import DeadlineExceeded, ResourceExhausted, SaliencyError
from saliency.models import load_model, register_model_config
from saliency.models.weights import weights_hash
from saliency.quality.evaluate import (
    EvaluateOptions,
    QualityScore,
    curve_scores,
    map_scores,
    plan_curve_tasks,
)
from saliency.quality.sanity import model_randomisation
from saliency.runtime.admission import Admission, DeepCosts, overloaded
from saliency.runtime.backend import (
    EVALUATE,
    POLICY,
    SANITY_CHECK,
    DeepEvent,
    Event,
    ExplainJob,
    FastEvent,
    PolicyEvent,
    QualityEvent,
    SanityJob,
    SanityOutcome,
    check_model,
)
from saliency.runtime.config import ServiceConfig
from saliency.runtime.explanation_cache import (
    CachedPrediction,
    ExplanationCache,
    Flight,
    Flights,
    input_digest,
    input_sketch,
    parse_size,
)
from saliency.runtime.fast_pool import BEFORE_DEEP, URGENT
from saliency.runtime.metrics import Metrics
from saliency.runtime.policy import (
    FALLBACKS,
    Costs,
    MethodChoice,
    PolicyDecision,
    budget_samples,
    next_ig_round,
    plan_within_budget,
)
from saliency.runtime.worker import ModelWorker

BACKEND = "embedded"
log = logging.getLogger(__name__)


@dataclass
class _Plan:
    """What runs after the prediction: deep methods as requested, fallbacks for a second fast
    pass, IG in adaptive rounds (params, step schedule), and the decision to report."""

    deep: dict[str, Any]
    fast_extra: dict[str, Any]
    ig: tuple[Any, tuple[int, ...]] | None = None
    decision: PolicyDecision | None = None
    budget_end: float = 0.0  # perf_counter() when the latency budget runs out (adaptive IG)


class EmbeddedBackend:
    """The embedded backend: models loaded in this process, each with its workers."""

    name = BACKEND
    features = frozenset({EVALUATE, POLICY, SANITY_CHECK})

    def __init__(self, config: ServiceConfig, metrics: Metrics, tracer: trace.Tracer):
        self.config = config
        self.metrics = metrics
        try:  # a config built in code skipped load_config's parsing: refuse before loading models
            budget = parse_size(config.explanation_cache_bytes)
        except ValueError as exc:
            raise ValueError(f"config explanation_cache_bytes: {exc}") from None
        for path in config.model_configs:  # user models, served under their configs' names
            register_model_config(path)
        self.workers = {
            name: ModelWorker(load_model(name, config.device), config, metrics, tracer)
            for name in config.models
        }

        self.models = {name: worker.model.spec for name, worker in self.workers.items()}
        for worker in self.workers.values():
            worker.warm_up()
        self._background: set[asyncio.Task] = set()  # sampled quality scoring
        self._deep_costs = DeepCosts()
        self._sanity_pool = ThreadPoolExecutor(1, thread_name_prefix="sanity")
        self._sanity_running = threading.Lock()  # one sanity check at a time
        self.cache = ExplanationCache(budget)
        self._flights = Flights()
        # Cache keys name the weights too; hashed once here (the served copy is never changed).
        self._weights = (
            {name: w.model.weights_digest for name, w in self.workers.items()} if self.cache.enabled else {}
        )

    def worker(self, name: str) -> ModelWorker:
        check_model(self, name)
        return self.workers[name]

    async def explain(self, job: ExplainJob, timeout: float) -> AsyncIterator[Event]:
        """Yield the FastEvent, then one DeepEvent per deep map as each completes, then the
        PolicyEvent and QualityEvent when asked for.

        Raises DeadlineExceeded after `timeout` seconds; queued deep work of this request is
        then dropped, as it is when the caller goes away (the generator is closed).
        """
        worker = self.worker(job.model)
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        fast, deep = split_by_kind(job.methods)
        submitted: list[DeepTask] = []  # every task queued for this request, dropped on exit
        admission = job.admission or await self.admit(job, timeout)
        try:
            result, digest = await self._fast(worker, job, fast, admission.priority, deadline)
            fast_seconds = time.perf_counter() - started
            delivered = list(result.attributions)
            yield FastEvent(result, fast_seconds)

            if _has_policy(job):
                plan = await asyncio.to_thread(self._plan, worker, job, result, deep, fast_seconds)
                if job.policy.latency_budget_ms is not None:
                    plan.budget_end = started + job.policy.latency_budget_ms / 1000
            else:  # everything requested: no thread hop for nothing
                plan = _Plan(deep, {})
            if plan.fast_extra:  # the policy's fallbacks: one more cheap pass
                extra_started = time.perf_counter()
                extra = await _within(
                    deadline,
                    worker.run_fast(job.x, Targets(classes=result.targets), plan.fast_extra, job.n_predictions),
                )
                for attribution in extra.attributions:
                    delivered.append(attribution)
                    yield DeepEvent(attribution, 0.0, time.perf_counter() - extra_started, pool=None)
            deep_maps = self._deep_maps(worker, job, result.targets, plan, deadline, submitted, admission.queued, digest)
            async with aclosing(deep_maps) as events:  # closed at once if the caller goes away
                async for event in events:
                    delivered.append(event.attribution)
                    yield event
            if plan.decision is not None:
                yield PolicyEvent(plan.decision)
            if job.evaluate is not None:
                scores = await self._evaluate(worker, job, result, delivered, job.evaluate, deadline, submitted)
                yield QualityEvent(scores)
            elif self.config.quality_sample_rate > random.random():
                self._evaluate_in_background(worker, job, result, delivered)
        except TaskCancelled as exc:
            raise DeadlineExceeded(str(exc)) from None
        finally:
            worker.cancel(submitted)
            if job.admission is None:  # admitted here: released here
                admission.close()

    # ---- the cache ---------------------------------------------------------------------------

    async def _fast(
        self, worker: ModelWorker, job: ExplainJob, fast: dict[str, Any], priority: int, deadline: float
    ) -> tuple[FastResult, asyncio.Future | None]:
        """The prediction and fast maps: from the cache when it holds all of them, else from the
        fast pass (stored off the loop after). Also returns a future of the input's digest for
        the deep maps' keys (None with the cache off)."""
        if not self.cache.enabled:
            result = await _within(deadline, worker.run_fast(job.x, job.targets, fast, job.n_predictions, priority))
            return result, None
        loop = asyncio.get_running_loop()
        sketch = input_sketch(job.x)  # an unseen input costs no full hash before its fast pass
        digest = None
        if self.cache.may_hold_prediction(job.model, sketch):
            digest, cached = await _within(
                deadline, loop.run_in_executor(None, self._fast_from_cache, worker, job, fast)
            )
            if cached is not None:
                for a in cached.attributions:
                    self.metrics.cache_hits.labels(job.model, a.method).inc()
                known = loop.create_future()
                known.set_result(digest)
                return cached, known
        result = await _within(deadline, worker.run_fast(job.x, job.targets, fast, job.n_predictions, priority))
        for a in result.attributions:
            self.metrics.cache_misses.labels(job.model, a.method).inc()
        stored = loop.run_in_executor(None, self._store_fast, job, fast, result, sketch, digest)
        stored.add_done_callback(_log_store_failure)
        return result, stored

    def _fast_from_cache(
        self, worker: ModelWorker, job: ExplainJob, fast: dict[str, Any]
    ) -> tuple[bytes, FastResult | None]:
        """(input digest, the FastResult if the cache holds the prediction and every fast map)."""
        digest = input_digest(job.x)
        weights = self._weights[job.model]
        entry = self.cache.get(ExplanationCache.prediction_key(job.model, weights, digest))
        if not isinstance(entry, CachedPrediction):
            return digest, None
        targets = job.targets.resolve(entry.logits)
        maps = []
        for name, params in fast.items():
            for target in targets:
                key = self.cache.map_key(job.model, weights, digest, name, params, target)
                hit = self.cache.get_map(key, name, target) if key is not None else None
                if hit is None:
                    return digest, None  # one fast pass makes them all: no partial answers
                maps.append(hit)
        predictions = top_predictions(entry.logits, worker.model.spec.labels, job.n_predictions)
        return digest, FastResult(entry.logits.clone(), predictions, targets, maps)

    def _store_fast(
        self, job: ExplainJob, fast: dict[str, Any], result: FastResult, sketch: int, digest: bytes | None
    ) -> bytes:
        """Keep the pass's prediction and maps (on a thread: hashing and copies); returns the digest."""
        digest = digest or input_digest(job.x)
        weights = self._weights[job.model]
        self.cache.put_prediction(ExplanationCache.prediction_key(job.model, weights, digest), result.logits, sketch)
        for a in result.attributions:
            if a.method in fast:
                key = self.cache.map_key(job.model, weights, digest, a.method, fast[a.method], a.target)
                if key is not None:
                    self.cache.put_map(key, a)
        self.metrics.cache_bytes.set(self.cache.nbytes)
        return digest

    def _look_up_deep(
        self, job: ExplainJob, items: list[tuple[str, Any, int]], digest: bytes
    ) -> tuple[list[Any], dict[int, Attribution]]:
        """On a thread (params may hold tensors to hash): each item's key, and the cached maps by index."""
        weights = self._weights[job.model]
        keys = [self.cache.map_key(job.model, weights, digest, name, params, t) for name, params, t in items]
        hits = {}
        for i, ((name, _, target), key) in enumerate(zip(items, keys)):
            if key is not None and (hit := self.cache.get_map(key, name, target)) is not None:
                hits[i] = hit
        return keys, hits

    def _store_map(self, key: Any, attribution: Attribution) -> None:
        """Keep a computed deep map (on a thread, before the flight's waiters get it)."""
        self.cache.put_map(key, attribution)
        self.metrics.cache_bytes.set(self.cache.nbytes)

    # ---- deep maps -----------------------------------------------------------------------------

    async def _deep_maps(
        self,
        worker: ModelWorker,
        job: ExplainJob,
        targets: tuple[int, ...],
        plan: _Plan,
        deadline: float,
        submitted: list[DeepTask],
        queued: Callable[[], None],
        digest: asyncio.Future | None = None,
    ) -> AsyncIterator[DeepEvent]:
        """DeepEvents of the planned deep maps (and adaptive IG rounds) as each completes: cached
        ones first, then as they complete. `queued()` hands the request's admission reservation
        over to the executor's queue. `digest`: a future of the input's digest (None: no cache).

        A map that identical requests computing now will deliver is awaited in their Flight;
        every Flight joined is left on exit, and its last waiter drops the computation."""
        items = [(name, params, target) for name, params in plan.deep.items() for target in targets]
        keys: list[Any] = [None] * len(items)
        hits: dict[int, Attribution] = {}
        looked_up = time.perf_counter()
        if digest is not None and items and (known := await _digest_or_none(digest)) is not None:
            keys, hits = await asyncio.to_thread(self._look_up_deep, job, items, known)
        looked_up = time.perf_counter() - looked_up
        pending: dict[asyncio.Future, DeepTask | Flight | None] = {}
        held: list[Flight] = []  # flights this request waits in, left in `finally`
        led: set[Flight] = set()  # flights whose computation this request submitted
        try:
            for attribution in hits.values():
                self.metrics.cache_hits.labels(job.model, attribution.method).inc()
                yield DeepEvent(attribution, 0.0, looked_up, pool=None)

            def join(flight: Flight, method: str) -> None:
                held.append(flight)
                pending[flight.wait()] = flight
                self.metrics.cache_hits.labels(job.model, method).inc()

            to_plan = []
            for i, (name, _, _) in enumerate(items):
                if i in hits:
                    continue
                flight = self._flights.get(keys[i]) if keys[i] is not None else None
                if flight is not None:
                    join(flight, name)
                else:
                    to_plan.append(i)
            planned = await asyncio.to_thread(plan_deep, worker.model, job.x, [items[i] for i in to_plan]) if to_plan else []
            to_submit = []
            for i, task in zip(to_plan, planned):
                # An identical request may have started this map while ours was planned.
                flight = self._flights.get(keys[i]) if keys[i] is not None else None
                if flight is not None:
                    join(flight, items[i][0])
                else:
                    to_submit.append((i, task))
            for i, task in to_submit:
                if keys[i] is None:  # this request's alone (a Flight's outlives its leader's deadline)
                    task.deadline = deadline
            pairs = worker.submit_tasks([task for _, task in to_submit], job.request_id) if to_submit else []
            for (i, _), (task, future) in zip(to_submit, pairs):
                if keys[i] is None:
                    submitted.append(task)
                    pending[future] = task
                    continue
                flight = self._flights.start(
                    keys[i], task, future,
                    drop=lambda t=task: worker.cancel([t]),
                    store=lambda a, key=keys[i]: self._store_map(key, a),
                )
                led.add(flight)
                held.append(flight)
                pending[flight.wait()] = flight
                self.metrics.cache_misses.labels(job.model, task.method).inc()
            queued()
            if plan.ig is not None:
                for target in targets:
                    rounds = self._adaptive_ig(worker, job, target, plan, deadline, submitted)
                    pending[asyncio.ensure_future(rounds)] = None
            while pending:
                done, _ = await _wait_first(deadline, set(pending))
                for future in done:
                    entry = pending.pop(future)
                    if entry is None:  # the adaptive IG rounds of one target
                        attribution, queue_seconds, compute_seconds = future.result()
                    else:
                        task = entry.task if isinstance(entry, Flight) else entry
                        attribution = future.result()
                        queue_seconds, compute_seconds = task.queue_seconds, task.compute_seconds
                        if isinstance(entry, Flight) and entry not in led:  # another request's work
                            attribution = dataclasses.replace(attribution, stats=dict(attribution.stats), cached=True)
                        else:
                            worker.costs.observe_samples(task.compute_seconds, task.n_samples)
                    yield DeepEvent(attribution, queue_seconds, compute_seconds)
        finally:
            for future in pending:
                future.cancel()
            for flight in held:
                self._flights.leave(flight)

    async def _adaptive_ig(
        self,
        worker: ModelWorker,
        job: ExplainJob,
        target: int,
        plan: _Plan,
        deadline: float,
        submitted: list[DeepTask],
    ) -> tuple[Attribution, float, float]:
        """IG for `target` in Gauss-Legendre rounds of growing step counts (runtime/policy.py):
        returns the last round's map and the queue / compute seconds of all rounds."""
        params, steps = plan.ig
        completeness_target = job.policy.target
        n, rounds, queue_seconds, compute_seconds = steps[0], 0, 0.0, 0.0
        while True:
            ig = dataclasses.replace(params, n_steps=n, rule="gausslegendre")
            ((task, future),) = await worker.submit_deep(job.x, (target,), {"ig": ig}, job.request_id, deadline)
            submitted.append(task)
            attribution = await future
            rounds += 1
            queue_seconds += task.queue_seconds
            compute_seconds += task.compute_seconds
            worker.costs.observe_samples(task.compute_seconds, task.n_samples)
            error = attribution.stats["completeness_error"]
            costs = Costs(worker.costs.sample_seconds, worker.executor.pending_samples, 0.0)
            nxt, why = next_ig_round(
                steps, n, error, completeness_target, plan.budget_end - time.perf_counter(), costs
            )
            if nxt is None:
                attribution.stats["policy_rounds"] = float(rounds)
                plan.decision.choices.append(
                    MethodChoice("ig", "ig", f"target {target}: {why} ({rounds} round(s))", n, error, target)
                )
                return attribution, queue_seconds, compute_seconds
            n = nxt

    # ---- admission -------------------------------------------------------------------------

    async def admit(self, job: ExplainJob, timeout: float) -> Admission:
        """Admit `job` (its input may not be decoded yet) or refuse it at once: RESOURCE_EXHAUSTED
        with the estimate when the work queued ahead would keep it past `timeout` seconds."""
        worker = self.worker(job.model)
        _, deep = split_by_kind(job.methods)
        samples, deep_bytes = await self._deep_costs.of(worker.model, job.targets, deep, job.policy)
        # No await from here on: the estimate and the reservation are one step on the loop.
        priority = BEFORE_DEEP if deep else URGENT
        estimate = worker.estimate_seconds(samples, priority)
        if estimate > timeout:
            self.metrics.rejected.labels(job.model, "overloaded").inc()
            raise overloaded(job.model, estimate, timeout, samples)
        admission = Admission(samples, deep_bytes, priority)
        admission.until_queued(worker.reserve_samples(samples))
        return admission

    # ---- policy ----------------------------------------------------------------------------

    def _plan(
        self, worker: ModelWorker, job: ExplainJob, result: FastResult, deep: dict[str, Any], spent: float
    ) -> _Plan:
        """Decide what runs after the prediction (everything requested when no policy is set)."""
        policy = job.policy
        if not _has_policy(job):
            return _Plan(deep, {})
        uncertain = ""
        if policy.explain_if is not None:
            explain, why = policy.explain_if.holds(result.predictions)
            if not explain:
                choices = [MethodChoice(name, "", why) for name in deep]
                return _Plan({}, {}, None, PolicyDecision(False, why, choices))
            uncertain = why
        if policy.latency_budget_ms is None:
            return _Plan(deep, {}, None, PolicyDecision(True, uncertain))
        kinds = {name: get_method(name).kind for name in job.methods}
        samples = {
            name: budget_samples(name, p, worker.model, job.x, result.targets[0]) for name, p in deep.items()
        }
        tracker = worker.costs
        costs = Costs(tracker.sample_seconds, worker.executor.pending_samples, spent)
        fallbacks = {FALLBACKS[name] for name in deep}
        budget = plan_within_budget(
            job.methods,
            kinds,
            samples,
            len(result.targets),
            policy.latency_budget_ms,
            costs,
            {name: make_params(name, self.config.limits) for name in fallbacks},
        )
        decision = budget.decision
        if uncertain:
            decision.reason = f"{uncertain}; {decision.reason}"
        if budget.ig_params is not None:
            # The adaptive rounds report per target; drop the plan's provisional IG line.
            decision.choices = [c for c in decision.choices if not (c.requested == c.chosen == "ig")]
        ig = (budget.ig_params, budget.ig_steps) if budget.ig_params is not None else None
        return _Plan(budget.deep, budget.fast_extra, ig, decision)

    # ---- evaluate --------------------------------------------------------------------------

    async def _evaluate(
        self,
        worker: ModelWorker,
        job: ExplainJob,
        result: FastResult,
        delivered: list[Attribution],
        options: EvaluateOptions,
        deadline: float,
        submitted: list[DeepTask],
    ) -> list[QualityScore]:
        """Score the delivered maps: curves on the deep executor, the rest on a thread."""
        groups = options.groups(list(job.methods), job.targets)
        tasks = plan_curve_tasks(job.x, delivered, groups, options.perturbation_steps)
        pairs = worker.submit_tasks(tasks, job.request_id, deadline) if tasks else []
        submitted.extend(task for task, _ in pairs)
        loop = asyncio.get_running_loop()
        on_maps = loop.run_in_executor(None, map_scores, delivered, result.predictions, groups, options)
        curves = await _within(deadline, asyncio.gather(*(f for _, f in pairs)), "the quality curves were done")
        scores = await _within(deadline, on_maps, "the quality scores were done") + curve_scores(curves, groups)
        for score in scores:
            self.metrics.quality.labels(job.model, score.label, score.metric).observe(score.value)
        return scores

    def _evaluate_in_background(
        self, worker: ModelWorker, job: ExplainJob, result: FastResult, delivered: list[Attribution]
    ) -> None:
        """Score a sampled request's maps for the metrics only; the response is already done."""

        async def score() -> None:
            submitted: list[DeepTask] = []
            try:
                deadline = time.monotonic() + self.config.default_deadline_s
                await self._evaluate(worker, job, result, delivered, EvaluateOptions(), deadline, submitted)
            except (SaliencyError, TaskCancelled) as exc:  # e.g. a full queue: skip this sample
                log.info("sampled quality scoring of %s skipped: %s", job.request_id, exc)
            finally:
                worker.cancel(submitted)

        task = asyncio.get_running_loop().create_task(score())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- sanity check ----------------------------------------------------------------------

    async def sanity_check(self, job: SanityJob, timeout: float) -> SanityOutcome:
        """Model randomisation on a copy of the served model, on a thread of its own; one at
        a time per service (RESOURCE_EXHAUSTED while another runs)."""
        worker = self.worker(job.model)
        if not self._sanity_running.acquire(blocking=False):
            raise ResourceExhausted("a sanity check is already running on this service; retry later", "model")
        stop = threading.Event()
        deadline = time.monotonic() + timeout

        def run() -> SanityOutcome:
            try:
                before = weights_hash(worker.model.module)
                result = model_randomisation(
                    worker.model,
                    [job.x],
                    job.methods,
                    job.layers,
                    job.modes,
                    None if job.target is None else [job.target],
                    job.seed,
                    worker.executor.chunk_sizes,
                    should_stop=lambda: stop.is_set() or time.monotonic() > deadline,
                )
                after = weights_hash(worker.model.module)
                if after != before:  # a bug, never a user error: say so loudly
                    raise RuntimeError("the served model's weights changed during a sanity check")
                return SanityOutcome(result, after)
            finally:
                self._sanity_running.release()

        future = asyncio.get_running_loop().run_in_executor(self._sanity_pool, run)
        # Whoever stopped waiting (deadline, cancelled call), the thread's outcome is consumed.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await _within(deadline, asyncio.shield(future), "the sanity check was done")
        finally:
            stop.set()  # a deadline or a cancelled call stops the thread at its next state

    # ---- helpers ---------------------------------------------------------------------------

    def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for worker in self.workers.values():
            worker.close()
        self._sanity_pool.shutdown(wait=False, cancel_futures=True)
        self._flights.close()


def _has_policy(job: ExplainJob) -> bool:
    """Whether the policy decides what runs after the prediction (see EmbeddedBackend._plan)."""
    return job.policy is not None and bool(job.policy.explain_if or job.policy.latency_budget_ms)


async def _digest_or_none(digest: asyncio.Future) -> bytes | None:
    """The input's digest, or None when storing the fast pass failed (logged; no cache then)."""
    try:
        return await asyncio.shield(digest)
    except Exception:  # noqa: BLE001 - _log_store_failure reports it
        return None


def _log_store_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("explanation cache: storing a fast pass failed: %r", exc)


async def _within(deadline: float, awaitable, what: str = "the prediction was ready"):
    left = deadline - time.monotonic()
    try:
        return await asyncio.wait_for(awaitable, timeout=max(left, 0))
    except asyncio.TimeoutError:
        raise DeadlineExceeded(f"the deadline passed before {what}") from None


async def _wait_first(deadline: float, futures: set):
    left = deadline - time.monotonic()
    done, rest = await asyncio.wait(futures, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED)
    if not done:
        raise DeadlineExceeded(f"the deadline passed with {len(rest)} map(s) still being computed")
    return done, rest
