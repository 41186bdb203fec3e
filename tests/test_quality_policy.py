"""The explain policy's arithmetic: IG step schedules, budget plans with fallbacks, the IG
stopping rule, explain_if, the cost tracker, and option validation."""

from __future__ import annotations

import pytest

from saliency.attribution.registry import all_methods, make_params
from saliency.attribution.types import Prediction
from saliency.errors import InvalidArgument
from saliency.models import model_specs
from saliency.runtime.policy import (
    FALLBACKS,
    Costs,
    CostTracker,
    ExplainCondition,
    PolicyOptions,
    ig_schedule,
    next_ig_round,
    plan_within_budget,
)

KINDS = {"gradcam": "fast", "vanilla": "fast", "ig": "deep", "smoothgrad": "deep", "rise": "deep"}
FALLBACK_PARAMS = {name: make_params(name) for name in ("input_x_gradient", "vanilla", "gradcam")}


def preds(*probabilities: float) -> list[Prediction]:
    return [Prediction(i, f"c{i}", 0.0, p) for i, p in enumerate(probabilities)]


def test_ig_schedule_doubles_from_four_up_to_the_cap():
    assert ig_schedule(50) == (4, 8, 16, 32, 50)
    assert ig_schedule(64) == (4, 8, 16, 32, 64)
    assert ig_schedule(8) == (4, 8)
    assert ig_schedule(4) == (4,)
    assert ig_schedule(3) == (3,)


def plan(methods, budget_ms, sample_ms=1.0, queued=0, spent_ms=0.0, targets=1):
    samples = {"ig": 6, "smoothgrad": methods.get("smoothgrad") and methods["smoothgrad"].n_samples, "rise": 100}
    costs = Costs(sample_ms / 1000, queued, spent_ms / 1000)
    return plan_within_budget(methods, KINDS, samples, targets, budget_ms, costs, FALLBACK_PARAMS)


def test_an_ample_budget_keeps_everything_and_runs_ig_adaptively():
    methods = {"gradcam": make_params("gradcam"), "ig": make_params("ig", n_steps=32), "smoothgrad": make_params("smoothgrad", n_samples=10)}
    p = plan(methods, budget_ms=1000)
    assert p.fast_extra == {} and set(p.deep) == {"smoothgrad"}
    assert p.ig_params.n_steps == 32 and p.ig_steps == (4, 8, 16, 32)
    assert [c.chosen for c in p.decision.choices] == ["gradcam", "ig", "smoothgrad"]
    assert p.decision.reason.startswith("every requested method fits")


def test_a_tight_budget_falls_back_in_request_order_with_the_numbers():
    methods = {"ig": make_params("ig"), "smoothgrad": make_params("smoothgrad", n_samples=10), "rise": make_params("rise", n_masks=100)}
    # 1 ms per sample, 2 ms spent, 20 ms budget: IG's first round (6) fits, then smoothgrad's
    # 10 (16 in all) fits, then RISE's 100 does not.
    p = plan(methods, budget_ms=20, spent_ms=2)
    chosen = {c.requested: c.chosen for c in p.decision.choices}
    assert chosen == {"ig": "ig", "smoothgrad": "smoothgrad", "rise": "gradcam"}
    assert set(p.fast_extra) == {"gradcam"}
    rise = p.decision.choices[-1]
    assert "100 samples" in rise.reason and "~116 ms" in rise.reason and "18 ms of the 20 ms budget" in rise.reason
    # Work already queued counts against the budget too.
    queued = plan(methods, budget_ms=20, spent_ms=2, queued=15)
    assert {c.requested: c.chosen for c in queued.decision.choices} == {
        "ig": "input_x_gradient", "smoothgrad": "vanilla", "rise": "gradcam"
    }
    assert "(15 queued ahead)" in queued.decision.choices[0].reason


def test_a_fallback_already_requested_is_not_computed_twice():
    methods = {"vanilla": make_params("vanilla"), "smoothgrad": make_params("smoothgrad", n_samples=500)}
    p = plan(methods, budget_ms=10)
    assert p.fast_extra == {}
    assert p.decision.choices[1].chosen == "vanilla" and "requested vanilla" in p.decision.choices[1].reason


def test_several_targets_multiply_the_samples():
    methods = {"smoothgrad": make_params("smoothgrad", n_samples=10)}
    assert plan(methods, budget_ms=25, targets=2).decision.choices[0].chosen == "smoothgrad"
    assert plan(methods, budget_ms=25, targets=3).decision.choices[0].chosen == "vanilla"


def test_ig_rounds_stop_at_the_target_at_the_cap_or_when_time_runs_out():
    steps = (4, 8, 16, 32)
    costs = Costs(0.001, 0, 0.0)
    assert next_ig_round(steps, 8, 0.01, 0.05, 1.0, costs) == (None, "completeness error 0.0100 <= target 0.05 at 8 steps")
    assert next_ig_round(steps, 8, 0.2, 0.05, 1.0, costs) == (16, "")
    nxt, why = next_ig_round(steps, 32, 0.2, 0.05, 1.0, costs)
    assert nxt is None and "cap of 32 steps" in why
    nxt, why = next_ig_round(steps, 8, 0.2, 0.05, 0.010, costs)  # 16 + 2 samples need 18 ms
    assert nxt is None and "16 steps would need ~18 ms and 10 ms are left" in why
    busy = Costs(0.001, 100, 0.0)  # the same, with 100 samples queued ahead
    assert next_ig_round(steps, 8, 0.2, 0.05, 0.1, busy)[0] is None


def test_explain_if():
    margin = ExplainCondition(margin_below=0.2)
    assert margin.holds(preds(0.5, 0.4))[0]
    ok, why = margin.holds(preds(0.9, 0.05))
    assert not ok and "margin 0.8500 >= 0.2" in why
    either = ExplainCondition(margin_below=0.2, probability_below=0.95)
    assert either.holds(preds(0.9, 0.05))[0]  # confident by margin, not by probability
    assert not either.holds(preds(0.97, 0.01))[0]
    assert ExplainCondition(margin_below=0.5).holds(preds(0.4))[0]  # one class: margin = p1


def test_cost_tracker_uses_the_prediction_until_deep_work_is_measured():
    tracker = CostTracker(weight=0.5)
    assert tracker.sample_seconds == 0.0
    tracker.observe_fast(0.04)
    assert tracker.sample_seconds == pytest.approx(0.04)
    tracker.observe_samples(0.2, 10)
    assert tracker.sample_seconds == pytest.approx(0.02)
    tracker.observe_samples(0.4, 10)
    assert tracker.sample_seconds == pytest.approx(0.03)
    tracker.observe_samples(0.0, 0)  # nothing measured: ignored
    assert tracker.sample_seconds == pytest.approx(0.03)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (PolicyOptions(latency_budget_ms=0.0), "latency_budget_ms"),
        (PolicyOptions(latency_budget_ms=1e9), "latency_budget_ms"),
        (PolicyOptions(completeness_target=0.1), "completeness_target"),
        (PolicyOptions(latency_budget_ms=10, completeness_target=1.5), "completeness_target"),
        (PolicyOptions(explain_if=ExplainCondition()), "explain_if"),
        (PolicyOptions(explain_if=ExplainCondition(probability_below=0.0)), "explain_if.probability_below"),
    ],
)
def test_bad_policy_options_name_the_field(options, field):
    with pytest.raises(InvalidArgument) as info:
        options.validate()
    assert info.value.field == field


@pytest.mark.slow  # loads every model of the zoo
def test_every_deep_method_has_a_fast_fallback_for_every_model_it_explains():
    for name, info in all_methods().items():
        if info.kind != "deep":
            continue
        assert name in FALLBACKS, f"{name} has no entry in policy.FALLBACKS"
        cheap = all_methods()[FALLBACKS[name]]
        assert cheap.kind == "fast", name
        for spec in model_specs().values():
            if info.unsupported_reason(spec) is None:
                assert cheap.unsupported_reason(spec) is None, f"{name}'s fallback can't explain {spec.name}"
