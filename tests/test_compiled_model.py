"""`compile_model`: the deep methods' forward-only model calls run a torch.compile'd copy of the
served model (models/compiled.py), checked against the eager module at start. Maps through a
served Explain equal the eager engine's, for forward-only methods (RISE, occlusion, with a padded
last chunk) and for the methods that stay eager (IG, LRP, Grad-CAM); no request compiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo.utils

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.registry import make_params
from saliency.attribution.types import Targets
from saliency.codec import convert, method_params, tensors
from saliency.models import load_model
from saliency.runtime.config import load_config
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, with_config

pytestmark = pytest.mark.slow

METHODS = {
    "ig": {"n_steps": 11},  # 11 steps in chunks of 4: a remainder of 3
    "rise": {"n_masks": 44, "seed": 3},  # 44 masks in forward chunks of 8: a padded last chunk
    "occlusion": {"window": 8, "stride": 8},
    "lrp": None,  # relevance rules: eager
    "gradcam": None,  # fast pass: eager
}


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=("tinycnn",), compile_model="default", max_chunk=4, max_chunk_forward=8))
    yield running
    running.stop()


def test_served_maps_equal_the_eager_engine_and_no_request_compiles(service):
    worker = service.service.backend.workers["tinycnn"]
    assert worker.compiled is not None and worker.executor.compiled is worker.compiled.module
    assert worker.compiled.logits_error < 1e-4
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(7))
    request = pb.ExplainRequest(
        model="tinycnn", targets=convert.targets_to_proto(Targets(top_k=2)),
        methods=method_params.method_requests_to_proto(METHODS),
    )
    request.tensor.CopyFrom(tensors.tensor_to_proto(x))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    calls: list[int] = []
    counting = worker.compiled.module.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    try:
        response = service.stub().Explain(request, timeout=120)
    finally:
        counting.remove()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # nothing compiled now
    # The forward-only samples went through the compiled copy, in chunks of at most 8.
    assert calls and max(calls) <= 8
    # A short chunk is padded to the compiled shape and cut back: the eager logits, no compile.
    short = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(worker.compiled.module(short), worker.model.module(short), rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    params = {name: make_params(name, **(values or {})) for name, values in METHODS.items()}
    eager = Engine(load_model("tinycnn"), ChunkSizes(4, 8)).explain(x, Targets(top_k=2), params)
    served = {(a.method, a.target): a.map for a in response.attributions}
    assert len(served) == len(eager.attributions) == 2 * len(METHODS)
    for a in eager.attributions:
        got = served[method_params.method_enum(a.method), a.target]
        values = np.frombuffer(got.data, dtype=np.float32).reshape(tuple(got.shape))
        np.testing.assert_allclose(values, a.map.numpy(), rtol=1e-4, atol=1e-6, err_msg=f"{a.method} {a.target}")


def test_compile_model_takes_only_the_known_modes():
    assert load_config(env={"SALIENCY_COMPILE_MODEL": "reduce-overhead"}).compile_model == "reduce-overhead"
    with pytest.raises(ValueError, match="compile_model: 'fast' is not one of"):
        load_config(env={"SALIENCY_COMPILE_MODEL": "fast"})
