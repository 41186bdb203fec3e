"""A model worker's threads set their own torch intra-op thread counts (runtime/worker.py)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from opentelemetry import trace

from saliency.attribution.registry import make_params
from saliency.attribution.types import Targets
from saliency.runtime.config import ServiceConfig, load_config
from saliency.runtime.metrics import Metrics
from saliency.runtime.worker import ModelWorker


def _worker(tiny, **config) -> ModelWorker:
    return ModelWorker(tiny, ServiceConfig(max_chunk=4, max_chunk_forward=4, **config), Metrics(), trace.get_tracer("t"))


@pytest.mark.parametrize("fast_threads", [0, 1, 3])
def test_fast_threads_use_their_own_intra_op_count_and_deep_keeps_the_process_one(tiny, tiny_images, fast_threads):
    process = torch.get_num_threads()
    worker = _worker(tiny, fast_threads=fast_threads)
    try:
        expected = fast_threads or max(1, process - 1)
        assert worker.fast_threads == expected
        seen = {worker.fast_pool.submit(torch.get_num_threads).result() for _ in range(4)}
        assert seen == {expected}

        counts: dict[str, int] = {}  # thread name -> intra-op threads, seen inside the model

        def record(module, inputs) -> None:
            counts.setdefault(threading.current_thread().name.split("_")[0], torch.get_num_threads())

        hook = tiny.module.register_forward_pre_hook(record)
        try:

            async def fast_then_deep():
                await worker.run_fast(tiny_images[0], Targets(top_k=1), {"vanilla": make_params("vanilla")}, 1)
                ((_, future),) = await worker.submit_deep(tiny_images[0], (0,), {"ig": make_params("ig", n_steps=2)}, "r1")
                return await future

            asyncio.run(fast_then_deep())
        finally:
            hook.remove()
        assert counts == {f"fast-{tiny.spec.name}": expected, f"deep-{tiny.spec.name}": process}
        assert torch.get_num_threads() == process  # the caller's thread is left alone
        fresh = ThreadPoolExecutor(1)
        assert fresh.submit(torch.get_num_threads).result() == process  # and so is torch's default
        fresh.shutdown()
    finally:
        worker.close()


def test_negative_fast_threads_is_refused():
    with pytest.raises(ValueError, match="fast_threads"):
        load_config(env={"SALIENCY_FAST_THREADS": "-1"})
