"""DeepPlan.memory_bytes: what a planned task holds outside its chunks, for admission control.

Every deep method's plan states it; it grows with what the task keeps (a custom reference
stack, coalitions, occlusion windows) and not with samples that only pass through chunks."""

from __future__ import annotations

import pytest
import torch

from saliency.attribution.executor import DeepPlan, SampleStream
from saliency.attribution.registry import all_methods, get_method, make_params

DEEP = sorted(name for name, info in all_methods().items() if info.kind == "deep")
INPUT = torch.zeros(3, 224, 224)
SAMPLE = 4 * INPUT.numel()  # one float32 input sample


def memory(model, method: str, x: torch.Tensor = INPUT, **params) -> int:
    return get_method(method).plan(model, x, 1, make_params(method, **params)).memory_bytes


@pytest.mark.parametrize("method", DEEP)
def test_every_deep_plan_states_what_it_holds(tiny, tiny_vit, method):
    model = tiny if get_method(method).unsupported_reason(tiny.spec) is None else tiny_vit
    task = get_method(method).plan(model, INPUT, 1, make_params(method))
    assert task.plan.held_bytes is not None, f"{method}'s plan does not state held_bytes"
    assert 0 < task.memory_bytes < 64 << 20, task.memory_bytes
    assert task.sample_bytes == SAMPLE


def test_ig_holds_a_few_input_copies_whatever_its_steps(tiny):
    few, many = memory(tiny, "ig", n_steps=4), memory(tiny, "ig", n_steps=1024)
    assert few <= many <= few + 8 * 1024 and many <= 6 * SAMPLE  # a path position per step


def test_samples_that_only_pass_through_chunks_cost_nothing_held(tiny):
    assert memory(tiny, "smoothgrad", n_samples=4) == memory(tiny, "smoothgrad", n_samples=1024)
    # RISE makes its masks per chunk: only the generator's states grow (5 kB per 128 masks).
    few, many = memory(tiny, "rise", n_masks=64), memory(tiny, "rise", n_masks=8192)
    assert few <= many < few + (1 << 20)
    assert many < 8192 * 224 * 224 * 2 / 500  # nothing like a mask bank


def test_a_larger_custom_reference_stack_is_counted(tiny):
    small = torch.zeros(2, 3, 224, 224)
    large = torch.zeros(40, 3, 224, 224)
    held_small = memory(tiny, "gradient_shap", reference="custom", custom_reference=small)
    held_large = memory(tiny, "gradient_shap", reference="custom", custom_reference=large)
    stack = large.nbytes - small.nbytes
    assert stack <= held_large - held_small < stack + (64 << 10)  # + a score per reference drawn


def test_what_grows_with_the_request_is_counted(tiny):
    assert memory(tiny, "lime", n_samples=8192) > memory(tiny, "lime", n_samples=64) + 8192 * 50
    assert memory(tiny, "kernel_shap", n_samples=8192) > memory(tiny, "kernel_shap", n_samples=64) + 8192 * 50
    assert memory(tiny, "occlusion", window=8, stride=4) > memory(tiny, "occlusion", window=32, stride=16)
    # a bigger input holds more
    assert memory(tiny, "ig", x=torch.zeros(3, 320, 320)) > memory(tiny, "ig")


def test_a_task_whose_plan_states_nothing_counts_four_input_samples():
    stream = SampleStream(3, False, lambda a, b: torch.zeros(b - a, 3, 8, 8), lambda s, o: None, sample_shape=(3, 8, 8))
    task = DeepPlan("custom", 0, [stream], lambda: None)
    assert task.sample_bytes == 4 * 3 * 8 * 8 and task.memory_bytes == 4 * task.sample_bytes
