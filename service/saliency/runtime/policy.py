"""The SLO-aware explain policy: a latency budget and an `explain_if` condition per request.

- `explain_if` (ExplainCondition): deep maps are computed only for uncertain predictions, i.e.
  when p(top-1) - p(top-2) < margin_below, or p(top-1) < probability_below (either set
  condition suffices). Fast maps come from the prediction's own pass and are always returned.
- `latency_budget_ms`: after the prediction, each deep method in request order is kept if its
  samples fit in what is left of the budget, given the work already queued and the measured
  cost per sample; otherwise it falls back to its cheap counterpart in the fast pass (FALLBACKS)
  and the decision says why, with the numbers. Integrated Gradients is adaptive instead: it
  runs Gauss-Legendre with 4, 8, 16, ... steps (up to the request's n_steps) and stops at the
  first whose completeness error is under `completeness_target`, or when the next step count
  would not fit in the time left. Only the last round's map is delivered.
Everything here is arithmetic on numbers the runtime measures (`CostTracker`); the runtime
runs the rounds.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saliency.attribution.registry import RegistryView, get_method

# The request's options and what the policy decided are the API's value types.
from saliency.wire.types import (  # noqa: F401 (re-exported: the policy's vocabulary)
    DEFAULT_COMPLETENESS_TARGET,
    MAX_BUDGET_MS,
    ExplainCondition,
    MethodChoice,
    PolicyDecision,
    PolicyOptions,
)

# The cheap counterpart of each deep method, computed by the fast pass: each deep method's
# `register(fallback=...)`.
FALLBACKS: Mapping[str, str] = RegistryView(
    lambda methods: {m.name: m.fallback for m in methods.values() if m.kind == "deep"}
)
IG_START_STEPS = 4


@dataclass(frozen=True)
class Costs:
    """What the plan knows: seconds per gradient sample on the deep executor, samples queued
    ahead, and seconds of the budget already spent (the prediction)."""

    sample_seconds: float
    queued_samples: int
    spent_seconds: float

    def seconds_for(self, samples: int) -> float:
        return (self.queued_samples + samples) * self.sample_seconds


class CostTracker:
    """Exponentially weighted per-sample cost of deep work for one model (thread-safe).

    Until deep work has been measured, a batch-1 prediction pass (a forward and a backward)
    stands in for one sample: chunked samples are cheaper, so the estimate errs on the safe side.
    """

    def __init__(self, weight: float = 0.2):
        self.weight = weight
        self._sample: float | None = None
        self._fast: float | None = None
        self._lock = threading.Lock()

    def _update(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.weight) * old + self.weight * new

    def observe_fast(self, seconds: float) -> None:
        with self._lock:
            self._fast = self._update(self._fast, seconds)

    def observe_samples(self, seconds: float, samples: int) -> None:
        if samples > 0 and seconds > 0:
            with self._lock:
                self._sample = self._update(self._sample, seconds / samples)

    def reset_samples(self, seconds: float, samples: int) -> None:
        """Start the per-sample estimate afresh from one measurement."""
        with self._lock:
            self._sample = seconds / samples

    @property
    def fast_seconds(self) -> float:
        """One prediction pass (0.0 until one was measured)."""
        with self._lock:
            return self._fast or 0.0

    @property
    def sample_seconds(self) -> float:
        with self._lock:
            return self._sample if self._sample is not None else (self._fast or 0.0)


def budget_samples(name: str, params: Any, model: Any, x: Any, target: int) -> int:
    """Deep samples one target's map of `name` needs within a budget: IG's first adaptive round
    (it runs in rounds, `ig_schedule`), any other method's registered sample count.
    model: the LoadedModel; x [C, H, W] the request's input (for methods that plan to count)."""
    if name == "ig":
        return min(IG_START_STEPS, params.n_steps) + 2
    info = get_method(name)
    task = info.plan(model, x, target, params) if info.samples is None else None
    return info.sample_count(params, task=task)


def ig_schedule(cap: int, start: int = IG_START_STEPS) -> tuple[int, ...]:
    """Step counts tried: start, 2 start, 4 start, ... while below cap, then cap itself."""
    steps, n = [], min(start, cap)
    while n < cap:
        steps.append(n)
        n *= 2
    return (*steps, cap)


@dataclass
class BudgetPlan:
    """The methods to run: `fast_extra` fallbacks for a second fast pass, `deep` at their
    requested params, IG (if kept) adaptively with `ig_params` over `ig_steps`."""

    fast_extra: dict[str, Any]
    deep: dict[str, Any]
    ig_params: Any | None
    ig_steps: tuple[int, ...]
    decision: PolicyDecision


def plan_within_budget(
    methods: Mapping[str, Any],
    kinds: Mapping[str, str],
    samples_per_target: Mapping[str, int],
    n_targets: int,
    budget_ms: float,
    costs: Costs,
    fallback_params: Mapping[str, Any],
) -> BudgetPlan:
    """Keep or replace each deep method of `methods` (request order) so the request fits.

    kinds: {method: "fast" | "deep"}; samples_per_target: deep samples one target's map
    needs (for IG, its smallest round); fallback_params: default params of each fallback.
    """
    decision = PolicyDecision(budget_ms=budget_ms, sample_ms=costs.sample_seconds * 1000)
    left = budget_ms / 1000 - costs.spent_seconds
    reserved = 0
    fast_extra: dict[str, Any] = {}
    deep: dict[str, Any] = {}
    ig_params, ig_steps = None, ()
    for name, params in methods.items():
        if kinds[name] == "fast":
            decision.choices.append(MethodChoice(name, name, "fast: from the prediction's own pass"))
            continue
        need = samples_per_target[name] * n_targets
        seconds = costs.seconds_for(reserved + need)
        if seconds <= left:
            reserved += need
            if name == "ig":
                ig_params, ig_steps = params, ig_schedule(params.n_steps)
                reason = (
                    f"adaptive Gauss-Legendre, {ig_steps[0]} to {ig_steps[-1]} steps, until the "
                    f"completeness error is under the target"
                )
            else:
                deep[name] = params
                reason = f"fits: ~{seconds * 1000:.0f} ms of {max(left, 0) * 1000:.0f} ms left"
            decision.choices.append(MethodChoice(name, name, reason))
            continue
        cheap = FALLBACKS[name]
        why = (
            f"{need} samples{' at ' + str(ig_schedule(params.n_steps)[0]) + ' IG steps' if name == 'ig' else ''}"
            f" ({costs.queued_samples + reserved} queued ahead) at {costs.sample_seconds * 1000:.2f} ms each "
            f"need ~{seconds * 1000:.0f} ms; {max(left, 0) * 1000:.0f} ms of the {budget_ms:g} ms budget "
            f"are left after {costs.spent_seconds * 1000:.0f} ms spent"
        )
        if cheap in methods:
            decision.choices.append(MethodChoice(name, cheap, f"fell back to the requested {cheap}: {why}"))
        else:
            fast_extra.setdefault(cheap, fallback_params[cheap])
            decision.choices.append(MethodChoice(name, cheap, f"fell back to {cheap}: {why}"))
    fell_back = [c.requested for c in decision.choices if c.requested != c.chosen]
    decision.reason = (
        f"fell back for {', '.join(fell_back)} to stay within {budget_ms:g} ms" if fell_back
        else f"every requested method fits in {budget_ms:g} ms"
    )
    return BudgetPlan(fast_extra, deep, ig_params, ig_steps, decision)


def next_ig_round(
    steps: tuple[int, ...], current: int, error: float, target: float, seconds_left: float, costs_per_round: Costs
) -> tuple[int | None, str]:
    """After a round of `current` steps with completeness `error`: the next step count, or
    None and why the last round stands. costs_per_round: the queue now and the sample cost."""
    if error <= target:
        return None, f"completeness error {error:.4f} <= target {target:g} at {current} steps"
    later = [n for n in steps if n > current]
    if not later:
        return None, f"completeness error {error:.4f} > target {target:g} at the cap of {current} steps"
    nxt = later[0]
    needed = costs_per_round.seconds_for(nxt + 2)
    if not math.isfinite(seconds_left) or needed > seconds_left:
        return None, (
            f"completeness error {error:.4f} > target {target:g} at {current} steps, but {nxt} steps "
            f"would need ~{needed * 1000:.0f} ms and {max(seconds_left, 0) * 1000:.0f} ms are left"
        )
    return nxt, ""
