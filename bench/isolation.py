"""Isolation (DESIGN §6): the fast path's p99 while deep work keeps the service busy, against
its unloaded p50; goal p99(loaded) <= 2 x p50(unloaded).

One embedded service on 127.0.0.1; fast requests (prediction + vanilla + input x gradient +
Grad-CAM, top-1) are sent one at a time by one client, first alone, then while background
clients keep IG requests queued. Latencies are client-side wall times of the RPC.
"""

from __future__ import annotations

import threading
import time

import grpc

from bench import contenders as c
from bench.progress import log
from bench.report import Row, Table, at_most
from bench.settings import Settings
from bench.torchserve import _Service
from bench.workload import MODEL_NAME, reference_workload
from saliency.attribution.types import Targets
from saliency.codec import convert
from saliency.runtime.config import ServiceConfig
from saliency.v1 import explainer_pb2 as pb

SUMMARY = "fast-path p99 under concurrent deep load vs its unloaded p50"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _latencies(stub, request: pb.ExplainRequest, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        stub.Explain(request, timeout=120)
        out.append((time.perf_counter() - started) * 1000)
    return out


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    n = settings.pick(100, 30)
    tensor = convert.tensor_to_proto(w.x.cpu())
    fast_request = pb.ExplainRequest(
        model=MODEL_NAME, tensor=tensor, targets=convert.targets_to_proto(Targets(top_k=1)),
        methods=convert.method_requests_to_proto(dict.fromkeys(c.FAST_METHODS)),
    )
    deep_request = pb.ExplainRequest(
        model=MODEL_NAME, tensor=tensor,
        methods=convert.method_requests_to_proto({"ig": {"n_steps": 64}}),
    )
    service = _Service(ServiceConfig(
        port=0, metrics_port=0, http_enabled=False, models=(MODEL_NAME,), device=settings.device,
        max_chunk=4, max_chunk_forward=4, reflection=False,
        explanation_cache_bytes=0,  # the deep load must be computed, not answered from the cache
    ))
    stop = threading.Event()
    deep_done = [0]

    def keep_deep_work_queued() -> None:
        while not stop.is_set():
            try:
                service.stub.Explain(deep_request, timeout=300)
                deep_done[0] += 1
            except grpc.RpcError:
                if not stop.is_set():
                    raise

    try:
        _latencies(service.stub, fast_request, 5)  # warm-up
        log(f"  {n} fast requests unloaded")
        unloaded = _latencies(service.stub, fast_request, n)
        loaders = [threading.Thread(target=keep_deep_work_queued, daemon=True) for _ in range(2)]
        for t in loaders:
            t.start()
        time.sleep(2.0)  # the deep queue fills
        log(f"  {n} fast requests while 2 clients keep IG (n=64) requests queued")
        loaded = _latencies(service.stub, fast_request, n)
    finally:
        stop.set()
        service.close()
    p50 = _percentile(unloaded, 0.5)
    rows = [
        Row("fast p50, unloaded", p50),
        Row("fast p99, unloaded", _percentile(unloaded, 0.99)),
        Row("fast p50, under deep load", _percentile(loaded, 0.5)),
        Row("fast p99, under deep load", _percentile(loaded, 0.99), goal=at_most(2.0, "<= 2 x unloaded p50")),
    ]
    return [
        Table(
            "isolation: fast-path latency under concurrent deep load (gRPC, embedded backend)",
            "ms",
            "fast p50, unloaded",
            "t / p50(unloaded)",
            rows,
            [f"{deep_done[0]} IG requests completed during the loaded phase; deep chunk size 4",
             "fast pool and deep worker share the CPU with no priority between them"],
        )
    ]
