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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saliency.attribution.types import Prediction
from saliency.errors import require

# The cheap counterpart of each deep method, computed by the fast pass.
FALLBACKS: dict[str, str] = {
    "ig": "input_x_gradient",  # IG's one-point (first-order) approximation with a zero baseline
    "smoothgrad": "vanilla",
    "guided_backprop": "vanilla",
    "deconvnet": "vanilla",
    "guided_gradcam": "gradcam",
    "rise": "gradcam",
    "occlusion": "gradcam",
    "scorecam": "gradcam",
    "gradient_shap": "input_x_gradient",  # one sample, alpha = 1, a zero reference
    "xrai": "gradcam",  # coarse regions, as XRAI's
    "deeplift": "input_x_gradient",  # DeepLIFT-Rescale's gradient approximation, zero reference
    "lrp": "input_x_gradient",  # LRP-0 on a ReLU network is gradient x input
    "kernel_shap": "gradcam",  # coarse regions, as superpixels are
    "lime": "gradcam",
}
IG_START_STEPS = 4
DEFAULT_COMPLETENESS_TARGET = 0.05
MAX_BUDGET_MS = 3_600_000.0


@dataclass(frozen=True)
class ExplainCondition:
    """Compute deep maps only if a set condition holds (None = not set)."""

    margin_below: float | None = None  # p(top-1) - p(top-2) < this
    probability_below: float | None = None  # p(top-1) < this

    def validate(self) -> None:
        require(
            self.margin_below is not None or self.probability_below is not None,
            "explain_if",
            "set margin_below and/or probability_below",
        )
        for name in ("margin_below", "probability_below"):
            value = getattr(self, name)
            if value is not None:
                require(0.0 < value <= 1.0, f"explain_if.{name}", f"{value} is outside (0, 1]")

    def holds(self, predictions: Sequence[Prediction]) -> tuple[bool, str]:
        """(whether to compute deep maps, why) from the predictions, best first."""
        p1 = predictions[0].probability
        p2 = predictions[1].probability if len(predictions) > 1 else 0.0
        margin = p1 - p2
        reasons = []
        if self.margin_below is not None:
            if margin < self.margin_below:
                return True, f"uncertain: top-1 minus top-2 probability {margin:.4f} < {self.margin_below:g}"
            reasons.append(f"margin {margin:.4f} >= {self.margin_below:g}")
        if self.probability_below is not None:
            if p1 < self.probability_below:
                return True, f"uncertain: top-1 probability {p1:.4f} < {self.probability_below:g}"
            reasons.append(f"top-1 probability {p1:.4f} >= {self.probability_below:g}")
        return False, "deep maps skipped, the prediction is confident: " + "; ".join(reasons)


@dataclass(frozen=True)
class PolicyOptions:
    latency_budget_ms: float | None = None
    completeness_target: float | None = None  # IG; default DEFAULT_COMPLETENESS_TARGET
    explain_if: ExplainCondition | None = None

    def validate(self) -> None:
        if self.latency_budget_ms is not None:
            require(
                0.0 < self.latency_budget_ms <= MAX_BUDGET_MS,
                "latency_budget_ms",
                f"{self.latency_budget_ms} is outside (0, {MAX_BUDGET_MS:g}]",
            )
        if self.completeness_target is not None:
            require(
                self.latency_budget_ms is not None,
                "completeness_target",
                "only applies with latency_budget_ms (it steers IG's step count within the budget)",
            )
            require(
                0.0 < self.completeness_target <= 1.0,
                "completeness_target",
                f"{self.completeness_target} is outside (0, 1]",
            )
        if self.explain_if is not None:
            self.explain_if.validate()

    @property
    def target(self) -> float:
        return DEFAULT_COMPLETENESS_TARGET if self.completeness_target is None else self.completeness_target


@dataclass
class MethodChoice:
    """What the policy did with one requested method. chosen: the method delivered instead
    ("" = none); n_steps / completeness_error / target: IG's final round, one per target."""

    requested: str
    chosen: str
    reason: str
    n_steps: int = 0
    completeness_error: float | None = None
    target: int | None = None


@dataclass
class PolicyDecision:
    deep_maps: bool = True  # False: explain_if skipped every deep map
    reason: str = ""
    choices: list[MethodChoice] = field(default_factory=list)
    budget_ms: float | None = None
    sample_ms: float = 0.0  # the measured cost of one gradient sample the plan used


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
