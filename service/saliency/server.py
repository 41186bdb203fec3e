"""Assembling and running the gRPC server: `start_service(config)` (tests bind port 0) is kept
apart from `run_server(config)` (the `saliency serve` main loop with SIGTERM draining)."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from saliency.api.access_log import AccessLogInterceptor
from saliency.api.reload import (
    CertificateStore,
    Reloader,
    ReloadingBearerTokens,
    check_tls_material,
)
from saliency.api.servicer import ExplainerServicer
from saliency.http.app import HttpApi
from saliency.http.server import HttpServer
from saliency.runtime.backend import Backend
from saliency.runtime.config import BACKENDS, ServiceConfig, check_tls
from saliency.runtime.logs import configure_logging
from saliency.runtime.metrics import Metrics
from saliency.runtime.tracing import make_tracer_provider, tracer_from
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
HEALTH_POLL_S = 1.0  # how often a backend with `healthy()` is asked
# A health service name that is SERVING while this process answers at all, whatever its
# backend says: the liveness probe's, so a TorchServe outage takes the pod out of the
# endpoints (readiness, "") without restarting this container.
LIVENESS_SERVICE = "liveness"


@dataclass
class RunningService:
    server: grpc.aio.Server
    port: int
    metrics_port: int
    backend: Backend
    metrics: Metrics
    health: health.aio.HealthServicer
    tracer_provider: TracerProvider
    _metrics_http: object
    _servicer: ExplainerServicer
    _health_watch: asyncio.Task | None = None
    reloader: Reloader | None = None  # TLS files and tokens; .request() on SIGHUP
    http: HttpServer | None = None  # the HTTP/JSON API (docs/http.md); None when http_enabled is off

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish within `grace`, then release all."""
        if self._health_watch is not None:
            self._health_watch.cancel()
        if self.reloader is not None:
            self.reloader.stop()
        await self.health.enter_graceful_shutdown()
        # Both transports drain together, within the same grace, before the backend goes.
        await asyncio.gather(self.server.stop(grace), *([self.http.stop()] if self.http is not None else []))
        self._servicer.close()
        self.backend.close()
        self._metrics_http.shutdown()
        self.tracer_provider.shutdown()


# What each TLS setting must hold (a swapped key and certificate is a common mistake).
_PEM_MARKERS = {
    "tls_cert_file": ("-----BEGIN CERTIFICATE-----", "a PEM certificate"),
    "tls_key_file": ("PRIVATE KEY-----", "a PEM private key"),
    "tls_client_ca_file": ("-----BEGIN CERTIFICATE-----", "a PEM CA certificate"),
}


def _read_pem(config: ServiceConfig, setting: str) -> bytes:
    """The file `setting` names; ValueError naming the setting if unreadable or not the PEM kind."""
    path = getattr(config, setting)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"config {setting}: cannot read {path!r}: {exc.strerror or exc}") from None
    marker, kind = _PEM_MARKERS[setting]
    if marker.encode() not in data:
        raise ValueError(f"config {setting}: {path!r} does not hold {kind}")
    return data


def _server_credentials(config: ServiceConfig) -> grpc.ServerCredentials | None:
    """None for plaintext, else TLS (mutual TLS with a client CA) from the configured files.

    Fails closed with a ValueError naming the setting, before anything binds: partial TLS,
    an unreadable file, a file of the wrong kind, a key that does not match the certificate.
    """
    check_tls(config)
    if not config.tls_cert_file:
        return None
    cert, key = _read_pem(config, "tls_cert_file"), _read_pem(config, "tls_key_file")
    client_ca = _read_pem(config, "tls_client_ca_file") if config.tls_client_ca_file else None
    try:
        check_tls_material(key, cert, client_ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(
            f"config tls_cert_file / tls_key_file / tls_client_ca_file: {config.tls_cert_file!r}, "
            f"{config.tls_key_file!r}: rejected by OpenSSL (key not matching the certificate, or a "
            f"PEM that does not parse): {exc}"
        ) from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _security_mode(credentials: grpc.ServerCredentials | None, config: ServiceConfig, tokens: frozenset[str]) -> str:
    """One line for the start-up log: transport and auth as they will be served."""
    if credentials is None:
        transport = "plaintext (no TLS)"
    elif config.tls_client_ca_file:
        transport = "mTLS (client certificates required)"
    else:
        transport = "TLS"
    auth = f"auth on ({len(tokens)} token{'s' if len(tokens) != 1 else ''})" if tokens else "auth off"
    return f"security: {transport}; {auth}"


def _connection_age_options(config: ServiceConfig) -> list[tuple[str, int]]:
    """Kubernetes Services balance connections, not calls: a bounded connection age makes
    long-lived clients reconnect, and so reach replicas added since (docs/deploy.md)."""
    options = []
    if config.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", max(1, round(config.max_connection_age_s * 1000))))
    if config.max_connection_age_grace_s > 0:
        options.append(("grpc.max_connection_age_grace_ms", max(1, round(config.max_connection_age_grace_s * 1000))))
    return options


def make_backend(config: ServiceConfig, metrics: Metrics, tracer: trace.Tracer) -> Backend:
    """The configured backend, with its models loaded (blocking). The composition root: the
    runtime and the backends know nothing of each other; only the service chooses."""
    if config.backend == "embedded":
        from saliency.runtime.embedded import EmbeddedBackend

        return EmbeddedBackend(config, metrics, tracer)
    if config.backend == "torchserve":  # imported only when chosen: TorchServe is optional
        from saliency.torchserve.backend import TorchServeBackend

        return TorchServeBackend(config, metrics, tracer)
    raise ValueError(f"config backend: {config.backend!r} is not one of {BACKENDS}")


async def start_service(config: ServiceConfig, span_exporter: SpanExporter | None = None) -> RunningService:
    """Load the models, start gRPC and /metrics; return once the service is SERVING.

    Security settings are checked first and fail closed (ValueError naming the setting):
    partial TLS, unreadable TLS files, an empty token set that was configured."""
    tokens = config.auth_tokens()
    credentials = _server_credentials(config)
    log.info("%s", _security_mode(credentials, config, tokens))
    metrics = Metrics()
    provider = make_tracer_provider(config.otlp_endpoint, span_exporter)
    tracer = tracer_from(provider)
    # Models load (and chunk sizes are measured) before the port opens: nothing half-ready
    # is ever reachable.
    backend = await asyncio.get_running_loop().run_in_executor(None, make_backend, config, metrics, tracer)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    interceptors = [AccessLogInterceptor()]  # first: calls that auth refuses are logged too
    watched = []
    auth = None
    if tokens:
        # BearerTokenInterceptor over the tokens file as last read (api/reload.py).
        auth = ReloadingBearerTokens(config, metrics, tokens)
        interceptors.append(auth)
        watched.append(auth.watched)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            *_connection_age_options(config),
        ],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    servicer = ExplainerServicer(backend, config, metrics, tracer)
    pb_grpc.add_ExplainerServicer_to_server(servicer, server)
    if config.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    address = f"{config.host}:{config.port}"
    certificates = None
    if credentials is not None:
        # The same files as credentials that re-read them when they change (api/reload.py).
        certificates = CertificateStore(config)
        credentials = certificates.credentials()
        watched.append(certificates.watched)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC on {address}")
    http = None
    if config.http_enabled:
        # The same servicer (one validation path), token store and certificate files as gRPC.
        ssl_context = certificates.ssl_context() if certificates is not None else None
        http = HttpServer(HttpApi(servicer, auth).app, config.http_host or config.host, config.http_port,
                          ssl_context, config.grace_s)
    await server.start()
    if http is not None:
        await http.start()
    metrics_http, metrics_port = metrics.serve(config.metrics_host, config.metrics_port)
    reloader = Reloader(watched, config.reload_interval_s)
    reloader.start()
    probe = getattr(backend, "healthy", None)
    watch = None
    if probe is None:
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    else:
        watch = asyncio.create_task(_watch_backend(probe, health_servicer), name="backend-health")
    log.info("saliency serving %s on %s:%d (metrics :%d%s)", ", ".join(config.models), config.host, port, metrics_port,
             f", HTTP {http.scheme}://{http.host}:{http.port}" if http is not None else "")
    return RunningService(
        server, port, metrics_port, backend, metrics, health_servicer, provider, metrics_http, servicer,
        _health_watch=watch, reloader=reloader, http=http,
    )


async def _watch_backend(probe, health_servicer: health.aio.HealthServicer) -> None:
    """SERVING while the backend's `healthy()` says so, NOT_SERVING otherwise; every HEALTH_POLL_S."""
    serving = None
    while True:
        try:
            ok = bool(await probe())
        except Exception:  # a failing probe is an unhealthy backend, never a dead watcher
            log.exception("backend health probe failed")
            ok = False
        if ok != serving:
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, status)
            if serving is not None or not ok:
                log.warning("backend is %s", "serving again" if ok else "NOT serving")
            serving = ok
        await asyncio.sleep(HEALTH_POLL_S)


def run_server(config: ServiceConfig) -> int:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests within config.grace_s."""
    configure_logging(config.log_format, config.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP's default action would end the process; while starting, the files are read anyway.
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        service = await start_service(config)
        loop.add_signal_handler(signal.SIGHUP, service.reloader.request)
        http = f", HTTP on {service.http.scheme}://{service.http.host}:{service.http_port}" if service.http else ""
        print(f"saliency: serving on {config.host}:{service.port}{http}, metrics on "
              f"{config.metrics_host}:{service.metrics_port}", flush=True)
        await stop.wait()
        log.info("draining (grace %.1fs)", config.grace_s)
        await service.stop(config.grace_s)

    asyncio.run(main())
    return 0
