"""Forward-only samples shared across targets: a request's top-k costs the model calls of top-1
for forward-only methods, and every map equals the one its target gets alone.

The executor runs each shared sample once and hands the outputs to every target's reducer
(attribution/executor.py). The reference is the method run for one target at a time, on an
executor with the same chunk sizes: the same inputs in the same chunks, so forward-only maps
must be bit-identical, not merely close; a sample handed to the wrong reducer, a row out of
place or a side tensor (RISE's masks) of another slice would change them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saliency.attribution.engine import Engine
from saliency.attribution.executor import (
    ChunkExecutor,
    ChunkReport,
    ChunkSizes,
    DeepTask,
    SameTensor,
    SampleStream,
    planned_samples,
)
from saliency.attribution.registry import get_method, make_params
from saliency.attribution.types import Attribution, Targets
from test_deep_methods import DEEP, SMALL

SIZES = ChunkSizes(4, 8)  # several chunks per map, so slices are cut and shared many times
TIMING = {"compute_ms", "queue_ms"}


def model_for(method, tiny, tiny_vit):
    return tiny if get_method(method).unsupported_reason(tiny.spec) is None else tiny_vit


def forward_only(method: str, model, x) -> bool:
    task = get_method(method).plan(model, x, 0, make_params(method, **SMALL[method]))
    return not any(s.needs_grad for s in task.streams)


def explain(model, x, targets: Targets, method: str) -> tuple[list[Attribution], int, int]:
    """The method's maps for `targets` on a fresh engine, its model-call rows with and without
    an input gradient."""
    engine = Engine(model, SIZES)
    rows = {True: 0, False: 0}

    def count(report: ChunkReport) -> None:
        rows[report.needs_grad] += report.samples

    engine.executor.on_chunk = count
    explanation = engine.explain(x, targets, {method: make_params(method, **SMALL[method])})
    return explanation.attributions, rows[True], rows[False]


def assert_identical(a: Attribution, b: Attribution) -> None:
    assert (a.method, a.target) == (b.method, b.target)
    assert torch.equal(a.map, b.map), (a.method, float((a.map - b.map).abs().max()))
    assert (a.raw is None) == (b.raw is None) and (a.raw is None or torch.equal(a.raw, b.raw))
    assert {k: v for k, v in a.stats.items() if k not in TIMING} == {
        k: v for k, v in b.stats.items() if k not in TIMING
    }


@pytest.mark.parametrize("method", DEEP)
def test_top_3_maps_equal_three_top_1_calls(tiny, tiny_vit, tiny_images, method):
    """Registry-driven: every deep method's top-3 maps against three single-target calls.
    Forward-only methods: identical maps, and top-3 costs exactly the model rows of top-1.
    Gradient methods: their gradient samples depend on the target and are not shared; their
    maps pack with the other targets' (batch invariance, float tolerance)."""
    model = model_for(method, tiny, tiny_vit)
    x = tiny_images[0]
    together, grad_rows, forward_rows = explain(model, x, Targets(top_k=3), method)
    assert len(together) == 3
    alone = [explain(model, x, Targets(classes=(a.target,)), method) for a in together]
    assert [a.target for a in together] == [maps[0].target for maps, *_ in alone]
    if forward_only(method, model, x):
        for mine, (maps, _, rows) in zip(together, alone, strict=True):
            assert_identical(mine, maps[0])
            assert rows == forward_rows  # one model call per perturbed input, whatever k
        assert grad_rows == 0
    else:
        for mine, (maps, *_) in zip(together, alone, strict=True):
            torch.testing.assert_close(mine.map, maps[0].map, rtol=1e-4, atol=1e-6)
        assert grad_rows == sum(g for _, g, _ in alone)  # a gradient per target and sample
        assert forward_rows <= sum(f for *_, f in alone)


def plan(model, x, target, method, **params) -> DeepTask:
    return get_method(method).plan(model, x, target, make_params(method, **params))


def alone(model, x, target, method, **params) -> Attribution:
    (result,) = ChunkExecutor(model, SIZES).run([plan(model, x, target, method, **params)])
    return result


RISE = {"n_masks": 30, "grid_size": 4}


def test_one_model_call_per_masked_input_for_every_target(tiny, tiny_images):
    x = tiny_images[1]
    executor = ChunkExecutor(tiny, SIZES)
    tasks = [plan(tiny, x, t, "rise", **RISE) for t in (0, 4, 7)]
    assert planned_samples(tasks) == 30
    for task in tasks:
        executor.submit(task)
    assert executor.pending_samples == 30
    while executor.step():
        pass
    assert executor.stats.samples == 30 and executor.stats.shared_samples == 60
    for task, target in zip(tasks, (0, 4, 7), strict=True):
        assert_identical(task.result, alone(tiny, x, target, "rise", **RISE))


def test_an_input_the_plans_convert_is_still_shared(tiny, tiny_images):
    """Plans copy an input that is not float32 on the CPU (a device tensor, float64): the key is
    the caller's tensor, so the copies still share (the bench's input lives on the GPU)."""
    x = tiny_images[1].double()
    tasks = [plan(tiny, x, t, "rise", **RISE) for t in (0, 4, 7)]
    assert planned_samples(tasks) == 30
    ChunkExecutor(tiny, SIZES).run(tasks)
    for task in tasks:
        assert_identical(task.result, alone(tiny, x, task.target, "rise", **RISE))


def test_only_the_same_input_and_parameters_share(tiny, tiny_images):
    """Another tensor with equal values, another seed, another n: separate samples (sharing is
    by identity of the input: nothing is hashed), and still each map is right."""
    x = tiny_images[1]
    tasks = [
        plan(tiny, x, 0, "rise", **RISE),
        plan(tiny, x.clone(), 1, "rise", **RISE),
        plan(tiny, x, 2, "rise", **RISE | {"seed": 9}),
        plan(tiny, x, 3, "rise", **RISE | {"n_masks": 31}),
        plan(tiny, x[None][0], 5, "rise", **RISE),  # another view of the same memory: shared
    ]
    assert planned_samples(tasks) == 30 * 3 + 31
    executor = ChunkExecutor(tiny, SIZES)
    executor.run(tasks)
    assert executor.stats.samples == 30 * 3 + 31
    assert SameTensor(x) == SameTensor(x[None][0]) != SameTensor(x.clone())
    assert SameTensor(x) != SameTensor(x[:, :16])  # same memory, another view
    for task, (xi, params) in zip(
        tasks,
        [(x, RISE), (x, RISE), (x, RISE | {"seed": 9}), (x, RISE | {"n_masks": 31}), (x, RISE)],
        strict=True,
    ):
        torch.testing.assert_close(task.result.map, alone(tiny, xi, task.target, "rise", **params).map)


def test_a_stream_that_arrives_later_runs_on_its_own_and_is_right(tiny, tiny_images):
    x = tiny_images[2]
    executor = ChunkExecutor(tiny, SIZES)
    early = executor.submit(plan(tiny, x, 1, "occlusion", window=8, stride=8))
    executor.step()  # early's first 8 windows
    late = executor.submit(plan(tiny, x, 2, "occlusion", window=8, stride=8))
    while executor.step():
        pass
    assert executor.stats.shared_samples == 0  # never at the same sample: nothing shared
    torch.testing.assert_close(early.result.map, alone(tiny, x, 1, "occlusion", window=8, stride=8).map)
    torch.testing.assert_close(late.result.map, alone(tiny, x, 2, "occlusion", window=8, stride=8).map)


def test_the_generating_task_failing_or_cancelled_leaves_the_others_exact(tiny, tiny_images):
    x = tiny_images[0]
    # Its generator raises: the next stream of the slice makes the inputs.
    broken, *others = [plan(tiny, x, t, "rise", **RISE) for t in (0, 4, 7)]

    def raises(start: int, stop: int):
        raise RuntimeError("generator failed")

    broken.streams[0].make_inputs = raises
    executor = ChunkExecutor(tiny, SIZES)
    for task in [broken, *others]:
        executor.submit(task)
    while executor.step():
        pass
    assert "generator failed" in str(broken.error)
    for task in others:
        assert_identical(task.result, alone(tiny, x, task.target, "rise", **RISE))
    assert executor.stats.samples == 30
    # Cancelled after its first chunk: the others go on from where the slice was.
    first, *rest = [plan(tiny, x, t, "rise", **RISE) for t in (0, 4, 7)]
    executor = ChunkExecutor(tiny, SIZES)
    for task in [first, *rest]:
        executor.submit(task)
    executor.step()
    first.cancelled = True
    while executor.step():
        pass
    assert first.error is not None
    for task in rest:
        assert_identical(task.result, alone(tiny, x, task.target, "rise", **RISE))
    assert executor.stats.samples == 30


def test_a_reducer_failure_fails_only_its_target(tiny, tiny_images):
    x = tiny_images[0]
    tasks = [plan(tiny, x, t, "occlusion", window=8, stride=8) for t in (0, 4, 7)]

    def explode(start, out):
        raise RuntimeError("reducer failed")

    tasks[1].streams[0].consume = explode
    executor = ChunkExecutor(tiny, SIZES)
    for task in tasks:
        executor.submit(task)
    while executor.step():
        pass
    assert "reducer failed" in str(tasks[1].error)
    for task in (tasks[0], tasks[2]):
        assert_identical(task.result, alone(tiny, x, task.target, "occlusion", window=8, stride=8))


def test_a_chunk_that_fails_because_of_another_request_reruns_the_shared_slice_once(tiny, tiny_images):
    x, other = tiny_images[0], tiny_images[1]
    shared = [plan(tiny, x, t, "rise", **RISE) for t in (0, 4, 7)]
    bad = plan(tiny, other, 2, "rise", n_masks=5, grid_size=4)
    made = bad.streams[0].make_inputs
    bad.streams[0].make_inputs = lambda a, b: made(a, b).inputs * torch.nan
    executor = ChunkExecutor(tiny, ChunkSizes(4, 16))  # bad's 5 + the shared slice's 11
    for task in [bad, *shared]:
        executor.submit(task)
    while executor.step():
        pass
    assert "non-finite" in str(bad.error) and executor.stats.chunks_rerun == 1
    for task in shared:
        assert task.error is None
        (solo,) = ChunkExecutor(tiny, ChunkSizes(4, 16)).run([plan(tiny, x, task.target, "rise", **RISE)])
        # Re-run alone, the shared slice is [0, 11) where a lone run cuts [0, 16): close.
        torch.testing.assert_close(task.result.map, solo.map, rtol=1e-5, atol=1e-7)


def test_scorecam_shares_both_phases(tiny, tiny_images):
    x = tiny_images[2]
    tasks = [plan(tiny, x, t, "scorecam") for t in (0, 3, 6)]
    executor = ChunkExecutor(tiny, SIZES)
    executor.run(tasks)
    assert executor.stats.samples == tasks[0].n_samples  # 1 + the kept channels, once
    for task in tasks:
        assert_identical(task.result, alone(tiny, x, task.target, "scorecam"))


def test_a_gradient_stream_cannot_be_shared():
    with pytest.raises(ValueError, match="forward-only"):
        SampleStream(2, True, lambda a, b: torch.zeros(b - a, 3), lambda s, o: None, share_key="k")


def test_two_requests_each_sharing_in_the_same_chunks_keep_their_own_masks(tiny, tiny_images):
    """Two images' top-3 RISE in one model call: each slice's masks go to its own reducers."""
    sizes = ChunkSizes(4, 64)  # both 30-mask streams fit in one chunk; alone, the same slices
    a, b = tiny_images[0], tiny_images[2]
    seeds = {id(a): 0, id(b): 9}  # masks depend on the seed only, not on the image
    tasks = [plan(tiny, x, t, "rise", **RISE | {"seed": seeds[id(x)]}) for x in (a, b) for t in (0, 4, 7)]
    executor = ChunkExecutor(tiny, sizes)
    executor.run(tasks)
    assert executor.stats.chunks == 1 and executor.stats.samples == 60
    for task, x in zip(tasks, (a, a, a, b, b, b), strict=True):
        params = RISE | {"seed": seeds[id(x)]}
        (solo,) = ChunkExecutor(tiny, sizes).run([plan(tiny, x, task.target, "rise", **params)])
        torch.testing.assert_close(task.result.map, solo.map, rtol=1e-5, atol=1e-7)


# Per method with shared streams: a change of each parameter that changes its samples (these
# must not share: a key that forgot one would hand a task another's outputs), and of each that
# does not (these must still share). Every parameter is in one of the two: a new parameter
# fails the coverage check until it is placed.
CUSTOM = [torch.full((3, 32, 32), 0.25), torch.full((3, 32, 32), -0.5)]
VARIANTS = {
    # an error target cuts slices at its checkpoints: targeted streams share among themselves
    "rise": ([{"n_masks": 31}, {"grid_size": 5}, {"p": 0.3}, {"seed": 9}, {"n_masks": 256, "max_map_error": 0.9}], []),
    "occlusion": ([{"stride": 4}, {"window": 16}, {"baseline": 1.0}], []),
    "scorecam": ([{"max_channels": 2}], [{"weighting": "class_probability"}]),
    "kernel_shap": (
        [{"n_segments": 12}, {"compactness": 10.0}, {"baseline": "zeros"}, {"seed": 3}, {"n_samples": 24},
         {"baseline": "blur", "blur_sigma": 2.0}, {"baseline": "blur", "blur_sigma": 3.0},
         {"n_samples": 64, "max_map_error": 0.9}],
        [],
    ),
    "lime": (
        [{"n_segments": 12}, {"compactness": 10.0}, {"baseline": "mean"}, {"blur_sigma": 3.0}, {"seed": 3},
         {"n_samples": 24}, {"n_samples": 64, "max_map_error": 0.9}],
        [{"kernel_width": 0.5}, {"alpha": 0.0}],
    ),
    "ig": (
        [{"baseline": "black"}, {"baseline": "blur", "blur_sigma": 2.0}, {"baseline": "blur", "blur_sigma": 3.0},
         {"baseline": "uniform", "seed": 1}, {"baseline": "uniform", "seed": 2},
         {"baseline": "custom", "custom_baseline": CUSTOM[0]}, {"baseline": "custom", "custom_baseline": CUSTOM[1]}],
        # the endpoints' forwards are shared
        [{"n_steps": 5}, {"rule": "riemann_middle"}, {"max_map_error": 0.05}],
    ),
    "gradient_shap": (
        [{"n_samples": 5}, {"reference": "black_white"}, {"seed": 3},
         {"reference": "custom", "custom_reference": torch.stack(CUSTOM)},
         {"reference": "custom", "custom_reference": torch.stack(CUSTOM[::-1])},
         {"n_samples": 16, "max_map_error": 0.9}],
        [{"stdev": 0.3}],  # the endpoints' forwards (F(x), F(reference)) are shared
    ),
}


def shares_across_targets(method, model, x) -> bool:
    params = make_params(method, **SMALL[method])
    a, b = (get_method(method).plan(model, x, t, params) for t in (0, 1))
    return any(s.share_key is not None and s.share_key == o.share_key for s, o in zip(a.streams, b.streams))


@pytest.mark.parametrize("method", DEEP)
def test_every_parameter_either_separates_or_shares_samples(tiny, tiny_vit, tiny_images, method):
    model = model_for(method, tiny, tiny_vit)
    x = tiny_images[1]
    if not shares_across_targets(method, model, x):
        assert method not in VARIANTS
        return
    assert method in VARIANTS, f"{method} shares samples: list its parameters in VARIANTS"
    separate, shared = VARIANTS[method]
    fields = {f.name for f in dataclasses.fields(get_method(method).params_type)}
    covered = {name for variant in separate + shared for name in variant}
    assert covered == fields, f"place {sorted(fields - covered)} of {method} in VARIANTS"

    def run(variants: list[dict]) -> tuple[list[DeepTask], int]:
        rows = [0]

        def count(report: ChunkReport) -> None:
            rows[0] += 0 if report.needs_grad else report.samples

        executor = ChunkExecutor(model, SIZES, count)
        tasks = [plan(model, x, i % 3, method, **SMALL[method] | v) for i, v in enumerate(variants)]
        executor.run(tasks)
        return tasks, rows[0]

    _, base_rows = run([{}])
    for variant in separate + shared:
        tasks, rows = run([{}, variant])
        if variant in shared:
            assert rows == base_rows, variant  # every forward-only sample shared
        else:
            assert rows > base_rows, variant  # its own perturbations (some phases may share)
        for task, params in zip(tasks, [{}, variant], strict=True):
            expected = alone(model, x, task.target, method, **SMALL[method] | params)
            torch.testing.assert_close(task.result.map, expected.map, rtol=1e-4, atol=1e-6)
