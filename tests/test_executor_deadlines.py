"""A task's deadline is the executor's to keep (DeepTask.deadline): from the first chunk past it
none of its samples are taken and it fails with DeadlineExceeded, whoever drives the executor;
the tasks beside it are untouched. The TorchServe deep handler relies on it (no loop of its
own), and so does the embedded deep worker for maps one request alone waits for."""

from __future__ import annotations

import time

import pytest
import torch

from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.registry import make_params, plan_deep
from saliency.errors import DeadlineExceeded


def _ig(model, x, target, n_steps):
    return plan_deep(model, x, [("ig", make_params("ig", n_steps=n_steps), target)])[0]


def test_an_expired_task_takes_no_more_samples_and_the_others_finish_as_alone(tiny):
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))
    executor = ChunkExecutor(tiny, ChunkSizes(4, 16))
    late, on_time = _ig(tiny, x, 1, 64), _ig(tiny, x, 2, 6)
    late.deadline, late.deadline_reason = time.monotonic() + 3600, "the batch ran into its budget"
    finished = []
    late.on_done = on_time.on_done = finished.append
    executor.submit(late)
    executor.submit(on_time)
    executor.step()  # one chunk of the long task's samples
    taken = late.streams[0].cursor + late.streams[1].cursor
    assert 0 < taken < late.n_samples
    late.deadline = time.monotonic() - 1  # its deadline has passed
    executor.drain()
    assert late.streams[0].cursor + late.streams[1].cursor == taken  # nothing taken after it
    assert isinstance(late.error, DeadlineExceeded) and late.result is None
    assert str(late.error).startswith("the batch ran into its budget before the ig map of class 1")
    assert executor.stats.tasks_expired == 1 and executor.pending_samples == 0
    assert finished == [late, on_time] or finished == [on_time, late]  # each handed back once
    (alone,) = ChunkExecutor(tiny, ChunkSizes(4, 16)).run([_ig(tiny, x, 2, 6)])
    torch.testing.assert_close(on_time.result.raw, alone.raw)


def test_a_task_without_deadline_or_before_it_runs_to_the_end(tiny):
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(4))
    executor = ChunkExecutor(tiny, ChunkSizes(4, 16))
    free, bounded = _ig(tiny, x, 0, 10), _ig(tiny, x, 0, 10)
    bounded.deadline = time.monotonic() + 3600
    executor.submit(free)
    executor.submit(bounded)
    assert executor.drain() == free.n_samples + bounded.n_samples
    assert free.error is None and bounded.error is None
    torch.testing.assert_close(free.result.raw, bounded.result.raw)


def test_a_finished_task_is_handed_back_after_its_chunk_is_reported_even_if_reporting_fails(tiny):
    """The chunk report comes first (a caller holding its result finds the chunk recorded); a
    report that raises must not leave the caller waiting."""
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(5))
    order = []

    def report(chunk):
        order.append("report")
        raise RuntimeError("metrics backend down")

    executor = ChunkExecutor(tiny, ChunkSizes(16, 16), on_chunk=report)
    task = _ig(tiny, x, 1, 4)  # two chunks: 4 path points (gradients), 2 endpoints (forward)
    task.on_done = lambda t: order.append("done")
    executor.submit(task)
    while executor.pending_samples:
        with pytest.raises(RuntimeError, match="metrics backend down"):
            executor.step()
    assert order == ["report", "report", "done"] and task.result is not None
