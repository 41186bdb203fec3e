"""The chunk executor keeps requests apart: chunks hold one input shape, and a failure in a chunk
fails only the tasks whose samples caused it; the others get the result they get alone."""

from __future__ import annotations

import pytest
import torch

from saliency.attribution.executor import ChunkExecutor, ChunkSizes, DeepTask
from saliency.attribution.registry import get_method, make_params


def plan(model, x, target, method, **params) -> DeepTask:
    return get_method(method).plan(model, x, target, make_params(method, **params))


def alone(model, x, target, method, **params):
    (result,) = ChunkExecutor(model, ChunkSizes(4, 16)).run([plan(model, x, target, method, **params)])
    return result


def spy_on_calls(executor: ChunkExecutor) -> list[tuple[int, ...]]:
    """Record the input shape of every model call the executor makes."""
    seen: list[tuple[int, ...]] = []
    original = executor._evaluate

    def spy(inputs, targets, needs_grad, **extras):
        seen.append(tuple(inputs.shape))
        return original(inputs, targets, needs_grad, **extras)

    executor._evaluate = spy
    return seen


def run_all(executor: ChunkExecutor, tasks: list[DeepTask]) -> None:
    for task in tasks:
        executor.submit(task)
    while executor.step():
        pass


def test_tasks_of_different_input_shapes_share_an_executor_and_both_succeed(tiny):
    """A [3, 24, 24] IG beside a [3, 32, 32] IG used to fail both (torch.cat in one chunk)."""
    g = torch.Generator().manual_seed(7)
    small, large = torch.randn(3, 24, 24, generator=g), torch.randn(3, 32, 32, generator=g)
    tasks = [plan(tiny, small, 1, "ig", n_steps=6), plan(tiny, large, 2, "ig", n_steps=6)]
    executor = ChunkExecutor(tiny, ChunkSizes(16, 16))  # room for both in one chunk
    seen = spy_on_calls(executor)
    run_all(executor, tasks)
    assert [t.error for t in tasks] == [None, None]
    torch.testing.assert_close(tasks[0].result.raw, alone(tiny, small, 1, "ig", n_steps=6).raw)
    torch.testing.assert_close(tasks[1].result.raw, alone(tiny, large, 2, "ig", n_steps=6).raw)
    # Grouped by shape up front: no model call (nor a failed cat) had to be split up.
    assert sorted(s[1:] for s in seen) == [(3, 24, 24)] * 2 + [(3, 32, 32)] * 2
    # Tasks of one shape still share calls.
    third = plan(tiny, large, 3, "ig", n_steps=6)
    fourth = plan(tiny, large, 4, "ig", n_steps=6)
    seen.clear()
    run_all(executor, [third, fourth])
    # 12 path points in one gradient call; the two tasks' endpoints (F(x'), F(x)) are the same
    # forwards for both targets, run once.
    assert sorted(s[0] for s in seen) == [2, 12]


def bad_inputs(task: DeepTask, make) -> DeepTask:
    """`task` with its first stream's inputs replaced by make(start, stop)."""
    task.streams[0].make_inputs = make
    return task


@pytest.mark.parametrize(
    "breakage, error",
    [
        ("wrong_shape", "inputs of shape"),
        ("raises", "input generator failed"),
        ("nan", "non-finite"),
        ("target", "index"),  # the model call itself fails on this task's samples
    ],
)
@pytest.mark.parametrize("good_method", ["ig", "smoothgrad"])
def test_a_task_that_breaks_its_chunk_fails_alone(tiny, tiny_images, breakage, error, good_method):
    x, other = tiny_images[0], tiny_images[1]
    good_params = {"n_steps": 9} if good_method == "ig" else {"n_samples": 9, "seed": 3}
    good = plan(tiny, x, 1, good_method, **good_params)
    if breakage == "target":
        bad = plan(tiny, other, 99, good_method, **good_params)  # tinycnn has 10 classes
    else:
        bad = plan(tiny, other, 2, good_method, **good_params)
        original = bad.streams[0].make_inputs

        def make(start: int, stop: int) -> torch.Tensor:
            if breakage == "raises":
                raise RuntimeError("input generator failed")
            inputs = original(start, stop)
            if breakage == "nan":
                return inputs * torch.nan
            return inputs[..., :16, :16]

        bad_inputs(bad, make)
    done = []
    bad.on_done = good.on_done = done.append
    executor = ChunkExecutor(tiny, ChunkSizes(16, 16))  # bad's 9 and good's first 7 share a chunk
    run_all(executor, [bad, good])
    assert good.error is None, good.error
    assert isinstance(bad.error, Exception) and error in str(bad.error), bad.error
    torch.testing.assert_close(good.result.raw, alone(tiny, x, 1, good_method, **good_params).raw)
    assert sorted(map(id, done)) == sorted([id(good), id(bad)])  # each reported exactly once
    assert executor.pending_samples == 0


def test_a_reducer_failure_fails_only_its_task(tiny, tiny_images):
    good = plan(tiny, tiny_images[0], 1, "ig", n_steps=6)
    bad = plan(tiny, tiny_images[1], 1, "smoothgrad", n_samples=6)

    def explode(start, out):
        raise RuntimeError("reducer failed")

    bad.streams[0].consume = explode
    run_all(ChunkExecutor(tiny, ChunkSizes(8, 8)), [good, bad])
    assert "reducer failed" in str(bad.error)
    torch.testing.assert_close(good.result.raw, alone(tiny, tiny_images[0], 1, "ig", n_steps=6).raw)


def test_isolation_reuses_generated_inputs_so_stateful_streams_stay_in_order(tiny, tiny_images):
    """SmoothGrad draws its noise in sample order: a re-run must not generate a slice twice."""
    good = plan(tiny, tiny_images[0], 1, "smoothgrad", n_samples=10, seed=5)
    calls = []
    original = good.streams[0].make_inputs

    def counted(start: int, stop: int) -> torch.Tensor:
        calls.append((start, stop))
        return original(start, stop)

    good.streams[0].make_inputs = counted
    bad = plan(tiny, tiny_images[1], 99, "smoothgrad", n_samples=2, seed=5)
    run_all(ChunkExecutor(tiny, ChunkSizes(8, 8)), [bad, good])  # chunk 1: bad's 2 + good's 6
    assert calls == [(0, 6), (6, 10)]
    assert bad.error is not None and good.error is None
    expected = alone(tiny, tiny_images[0], 1, "smoothgrad", n_samples=10, seed=5)
    torch.testing.assert_close(good.result.raw, expected.raw)


@pytest.mark.gpu
def test_slices_made_on_the_device_and_on_the_host_share_chunks_on_cuda():
    """IG makes its path points on the model's device, SmoothGrad and GradientSHAP on the host:
    their slices share chunks (concatenating across devices used to fail every task in them),
    and each result equals the task's result alone on cuda and matches the CPU."""
    from saliency.models import load_model

    on_cpu, on_cuda = load_model("tinycnn"), load_model("tinycnn", "cuda")
    xs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    specs = [
        ("ig", {"n_steps": 9}),
        ("smoothgrad", {"n_samples": 7, "seed": 2}),
        ("gradient_shap", {"n_samples": 9, "reference": "uniform", "seed": 4}),
        ("rise", {"n_masks": 40, "grid_size": 4}),
    ]
    packed = [plan(on_cuda, xs[i], i, m, **p) for i, (m, p) in enumerate(specs)]
    executor = ChunkExecutor(on_cuda, ChunkSizes(32, 64))
    run_all(executor, packed)
    assert executor.stats.chunks_rerun == 0
    for i, (task, (method, params)) in enumerate(zip(packed, specs, strict=True)):
        assert task.error is None, (method, task.error)
        (solo,) = ChunkExecutor(on_cuda, ChunkSizes(4, 8)).run([plan(on_cuda, xs[i], i, method, **params)])
        torch.testing.assert_close(task.result.map, solo.map, rtol=1e-4, atol=1e-6)
        (host,) = ChunkExecutor(on_cpu, ChunkSizes(4, 8)).run([plan(on_cpu, xs[i], i, method, **params)])
        scale = float(host.map.abs().max()) or 1.0
        torch.testing.assert_close(task.result.map.cpu() / scale, host.map / scale, rtol=0, atol=2e-3)
