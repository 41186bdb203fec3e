"""The explanation cache (DESIGN §6: a hit >= 5 x faster than computing the map) and what the
cache costs a call it cannot answer, side by side with the in-process fast pass.

One embedded service with the cache on (the default budget) and one with it off, on 127.0.0.1
in this process; every call asks for the reference fast pass (prediction + vanilla + input x
gradient + Grad-CAM, top-1) of EfficientNet-Lite0 and gets float32 maps:
- hit: an input the cache holds (no model work);
- miss: a new input every call (the chelsea tensor plus noise of 1e-6, the same work), so the
  call pays the fast pass and the cache's bookkeeping (a sketch, then hashing and copies off
  the loop after the answer);
- cache off: the same input every call, computed every time;
- in-process: the same fast pass called directly on this thread.
A second table does the same for IG (n=50, top-1): hit vs computing the map.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from bench import contenders as c
from bench.progress import log
from bench.report import Table, at_most, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from bench.torchserve import _Service
from bench.workload import MODEL_NAME, reference_workload
from saliency.attribution.types import Targets
from saliency.codec import convert
from saliency.runtime.config import ServiceConfig
from saliency.v1 import explainer_pb2 as pb

SUMMARY = "explanation cache: hit vs computing the map (fast pass, IG), miss and cache-off overhead"
IN_PROCESS = "in-process fast pass"
HIT = "gRPC, cache hit"
MISS = "gRPC, cache on, new input (miss)"
OFF = "gRPC, cache off"
IG_HIT = "gRPC IG n=50, cache hit"
IG_COMPUTED = "gRPC IG n=50, computed (cache off)"


def _request(x: torch.Tensor, methods: dict) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model=MODEL_NAME,
        tensor=convert.tensor_to_proto(x.cpu()),
        targets=convert.targets_to_proto(Targets(top_k=1)),
        methods=convert.method_requests_to_proto(methods),
    )


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    repeats = settings.pick(40, 12)
    base = ServiceConfig(
        port=0, metrics_port=0, models=(MODEL_NAME,), device=settings.device,
        max_chunk=8, max_chunk_forward=4, reflection=False,
        http_port=0,  # two services in one process: each binds its HTTP API on a free port
    )
    fast = dict.fromkeys(c.FAST_METHODS)
    ig = {"ig": {"n_steps": 50}}
    generator = torch.Generator().manual_seed(0)
    fresh = (
        _request(w.x + 1e-6 * torch.randn(w.x.shape, generator=generator).to(w.x.device), fast)
        for _ in itertools.count()
    )
    same, same_ig = _request(w.x, fast), _request(w.x, ig)
    log("  starting the service twice (cache on, cache off)")
    on = _Service(base)
    try:
        off = _Service(dataclasses.replace(base, explanation_cache_bytes=0))
    except BaseException:
        on.close()
        raise
    try:
        for stub in (on.stub, off.stub):
            stub.Explain(same, timeout=120)
            stub.Explain(same_ig, timeout=300)
        if not all(a.cached for a in on.stub.Explain(same, timeout=120).attributions):
            raise RuntimeError("the cache did not answer a repeated request")
        contenders = {
            IN_PROCESS: lambda: c.ours_fast(w, 1),
            HIT: lambda: on.stub.Explain(same, timeout=120),
            MISS: lambda: on.stub.Explain(next(fresh), timeout=120),
            OFF: lambda: off.stub.Explain(same, timeout=120),
        }
        log(f"  fast pass: {len(contenders)} contenders, {repeats} interleaved repeats")
        timings = interleaved(contenders, repeats, warmup=3, sync=w.sync)
        ig_contenders = {
            IG_COMPUTED: lambda: off.stub.Explain(same_ig, timeout=300),
            IG_HIT: lambda: on.stub.Explain(same_ig, timeout=300),
        }
        log(f"  IG: {len(ig_contenders)} contenders, {settings.pick(10, 3)} interleaved repeats")
        ig_timings = interleaved(ig_contenders, settings.pick(10, 3), warmup=1, sync=w.sync)
        entries, held = len(on.running.backend.cache), on.running.backend.cache.nbytes
    finally:
        on.close()
        off.close()
    hit_ratio = timings[HIT].median / timings[MISS].median
    goals = {
        HIT: at_most(0.2, "<= 0.2 (a hit >= 5 x faster than the fast pass in-process)"),
        MISS: at_most(1.25, "<= 1.25 (service adds <= 25 %)"),
        OFF: at_most(1.25, "<= 1.25 (service adds <= 25 %)"),
    }
    return [
        Table(
            "explanation cache, fast pass p50 (prediction + vanilla + input x gradient + Grad-CAM, top-1)",
            "ms",
            IN_PROCESS,
            "t / t(in-proc)",
            time_rows(timings, goals),
            [
                f"hit / miss through the same service: {hit_ratio:.3f} ({1 / hit_ratio:.1f} x faster)",
                f"cache after the run: {entries} entries, {held / 2**20:.1f} MiB",
                "float32 maps; p50 = median of interleaved calls, one at a time",
            ],
        ),
        Table(
            "explanation cache, IG n=50 (top-1) p50",
            "ms",
            IG_COMPUTED,
            "t / t(computed)",
            time_rows(ig_timings, {IG_HIT: at_most(0.2, "<= 0.2 (>= 5 x faster)")}),
            ["the computed map comes from a service with the cache off, the hit from one with it on"],
        ),
    ]
