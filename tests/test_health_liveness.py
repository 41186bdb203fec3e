"""Liveness apart from readiness: while the backend says it is unhealthy, `grpc.health.v1`
answers NOT_SERVING for "" (the readiness probe: the pod leaves the endpoints) and SERVING for
"liveness" (the liveness probe: the container is not restarted for its backend's outage)."""

from __future__ import annotations

import asyncio
import contextlib

from grpc_health.v1 import health_pb2, health_pb2_grpc

from saliency.server import LIVENESS_SERVICE, _watch_backend
from service_harness import ServiceThread, with_config

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def test_liveness_stays_serving_while_the_backend_is_down():
    service = ServiceThread(with_config(models=("tinycnn",)))
    health = health_pb2_grpc.HealthStub(service.channel())

    def status(name: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status

    async def backend_down_for_a_while():
        async def probe() -> bool:
            return False

        watch = asyncio.create_task(_watch_backend(probe, service.service.health))
        await asyncio.sleep(0.3)  # the watcher has seen the backend down
        return watch

    try:
        assert status("") == SERVING and status(LIVENESS_SERVICE) == SERVING
        watch = service.call(backend_down_for_a_while())
        try:
            assert status("") == NOT_SERVING
            assert status(LIVENESS_SERVICE) == SERVING
        finally:
            async def cancel():
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch

            service.call(cancel())
    finally:
        service.stop()
