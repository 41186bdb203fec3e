"""The gRPC service's fast-pass latency through the embedded backend and through TorchServe,
against the in-process fast pass (DESIGN §6: the service adds <= 25 %, the TorchServe path
<= 50 %).

Every contender computes the same thing: prediction + vanilla + input x gradient + Grad-CAM for
the top-1 class of the reference image. The services get the normalised input as a tensor (no
image decoding, which the in-process call does not do either) and run on 127.0.0.1 in this
process; the torchserve service starts its own TorchServe (Java 17 and `make models` needed: the
table says so and the row is left out when it cannot start).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import threading
from pathlib import Path

import grpc

from bench import contenders as c
from bench.report import Table, at_most, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from bench.workload import MODEL_NAME, reference_workload
from saliency.attribution.types import Targets
from saliency.codec import convert
from saliency.runtime.config import ServiceConfig
from saliency.server import RunningService, start_service
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc

SUMMARY = "fast pass p50: in-process vs gRPC (embedded) vs gRPC (torchserve)"
ROOT = Path(__file__).resolve().parent.parent
IN_PROCESS = "in-process fast pass"
EMBEDDED = "gRPC Explain, embedded backend"
TORCHSERVE = "gRPC Explain, torchserve backend"


class _Service:
    """A saliency service on its own event-loop thread (port 0), stopped with `close()`."""

    def __init__(self, config: ServiceConfig):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-service", daemon=True)
        self.thread.start()
        self.running: RunningService = self._call(start_service(config), timeout=400)
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.running.port}", options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.stub = pb_grpc.ExplainerStub(self.channel)

    def _call(self, coroutine, timeout: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.channel.close()
        self._call(self.running.stop(0), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def _log(message: str) -> None:
    print(f"  {message}", flush=True)


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    repeats = settings.pick(40, 10)
    base = ServiceConfig(
        port=0, metrics_port=0, http_enabled=False, models=(MODEL_NAME,), device=settings.device,
        max_chunk=8, max_chunk_forward=4, reflection=False,  # no chunk measurement: fast only
        explanation_cache_bytes=0,  # every call computes (hits: bench explanation_cache)
    )
    request = pb.ExplainRequest(
        model=MODEL_NAME,
        tensor=convert.tensor_to_proto(w.x.cpu()),
        targets=convert.targets_to_proto(Targets(top_k=1)),
        methods=convert.method_requests_to_proto(dict.fromkeys(c.FAST_METHODS)),
    )
    services: dict[str, _Service] = {}
    notes = [
        "the services get the normalised input as a tensor and answer float32 maps; "
        "p50 = median of interleaved calls, one at a time; explanation cache off",
    ]
    try:
        _log("starting the service with the embedded backend")
        services[EMBEDDED] = _Service(base)
        try:
            _log("starting the service with the torchserve backend (it starts TorchServe: 20-40 s)")
            services[TORCHSERVE] = _Service(_torchserve_config(base))
        except Exception as exc:  # noqa: BLE001 - no TorchServe here: report it, keep the rest
            _log(f"TorchServe could not start: {exc}".splitlines()[0])
            notes.append(f"torchserve row left out: {str(exc).splitlines()[0]}")
        contenders = {IN_PROCESS: lambda: c.ours_fast(w, 1)}
        for name, service in services.items():
            contenders[name] = lambda stub=service.stub: stub.Explain(request, timeout=120)
        _log(f"{len(contenders)} contenders, {repeats} interleaved repeats")
        timings = interleaved(contenders, repeats, warmup=3, sync=w.sync)
    finally:
        for service in services.values():
            service.close()
    goals = {EMBEDDED: at_most(1.25, "<= 1.25 (service adds <= 25 %)"), TORCHSERVE: at_most(1.5, "<= 1.5 (<= 50 %)")}
    return [
        Table(
            "service overhead: fast pass p50 (prediction + vanilla + input x gradient + Grad-CAM, top-1)",
            "ms",
            IN_PROCESS,
            "t / t(in-proc)",
            time_rows(timings, goals),
            notes,
        )
    ]


def _torchserve_config(base: ServiceConfig) -> ServiceConfig:
    store = ROOT / "model_store"
    if shutil.which("java") is None:
        raise RuntimeError("no java on PATH (TorchServe needs Java 17)")
    if not (store / f"{MODEL_NAME}.mar").is_file():
        raise RuntimeError(f"{store}/{MODEL_NAME}.mar is missing: run `make models`")
    return dataclasses.replace(
        base,
        backend="torchserve",
        torchserve_model_store=str(store),
        torchserve_config=str(ROOT / "deploy" / "torchserve" / "config.properties"),
    )
