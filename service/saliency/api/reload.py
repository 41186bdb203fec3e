"""Reload of the TLS certificate and key (and the client CA) and of the bearer-token file while
serving: cert-manager renews certificates and Kubernetes updates mounted Secrets in place, and
a restart for each would drop calls in flight.

A `Reloader` checks the files every `reload_interval_s` and on SIGHUP (`saliency serve`). A
change is read, validated and only then put in service; a file that fails (half written, key
not matching the certificate, no tokens left) leaves the previous material in service and is
logged as an error, and retried on its next change. New TLS handshakes get the new certificate
(gRPC asks `CertificateStore.fetch` at each one); connections already open keep theirs until
they close (max_connection_age_s bounds that).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from saliency.api.auth import BearerTokenInterceptor
from saliency.runtime.config import ServiceConfig
from saliency.runtime.metrics import Metrics

log = logging.getLogger(__name__)


def _fingerprint(paths: Sequence[str]) -> tuple:
    """What changes when any of the files is replaced or rewritten (stat follows the symlinks
    a Kubernetes Secret volume swaps)."""
    marks = []
    for path in paths:
        try:
            st = os.stat(path)
            marks.append((path, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            marks.append((path, None))
    return tuple(marks)


class _Watched:
    """Files whose change calls `apply` once; a failing apply is retried only on the next change."""

    def __init__(self, what: str, paths: Sequence[str], apply: Callable[[], str]):
        self.what, self.paths, self._apply = what, list(paths), apply
        self._seen = _fingerprint(self.paths)

    def check(self) -> bool:
        """Apply the files if they changed since last seen; True if new material is in service."""
        now = _fingerprint(self.paths)
        if now == self._seen:
            return False
        self._seen = now
        try:
            detail = self._apply()
        except Exception as exc:  # keep serving with what worked; say why loudly
            log.error("reload of the %s refused, the previous one stays in service: %s", self.what, exc)
            return False
        log.info("reloaded the %s (%s)", self.what, detail)
        return True


def server_context(key: bytes, cert: bytes, client_ca: bytes | None) -> ssl.SSLContext:
    """A TLS server context of this material (TLS 1.2 and later; with a client CA, client
    certificates signed by it are required). Raises unless the key matches the certificate and
    every PEM parses (OpenSSL's checks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="saliency-tls-") as folder:  # private (0700)
        key_path, cert_path = Path(folder, "key.pem"), Path(folder, "cert.pem")
        key_path.write_bytes(key)
        cert_path.write_bytes(cert)
        context.load_cert_chain(str(cert_path), str(key_path))
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
    return context


def check_tls_material(key: bytes, cert: bytes, client_ca: bytes | None) -> None:
    """Raise unless the key matches the certificate and every PEM parses."""
    server_context(key, cert, client_ca)


class CertificateStore:
    """The server's key, certificate chain and client CA: for gRPC's dynamic SSL credentials,
    and as the SSLContext the HTTP API's handshakes use. Material is read and validated once per
    change; every context made from it is complete before it is used and never changed after."""

    def __init__(self, config: ServiceConfig):
        self._config = config
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.mutual = bool(config.tls_client_ca_file)
        self._initial, self._context = self._read()  # a bad file at start fails the start
        paths = [config.tls_key_file, config.tls_cert_file] + ([config.tls_client_ca_file] if self.mutual else [])
        self.watched = _Watched("TLS certificate", paths, self._stage)

    def _read(self) -> tuple[grpc.ServerCertificateConfiguration, ssl.SSLContext]:
        config = self._config
        key, cert = Path(config.tls_key_file).read_bytes(), Path(config.tls_cert_file).read_bytes()
        client_ca = Path(config.tls_client_ca_file).read_bytes() if self.mutual else None
        context = server_context(key, cert, client_ca)  # the validation, from the bytes read
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca), context

    def _stage(self) -> str:
        configuration, context = self._read()
        with self._lock:
            self._pending, self._context = configuration, context
        return self._config.tls_cert_file

    def ssl_context(self) -> ssl.SSLContext:
        """The HTTP API's listening context. Its SNI callback, which OpenSSL runs for every
        ClientHello (with or without a server name), moves each new connection onto the context
        of the material last put in service: a reload takes effect for new handshakes whole
        (key, certificate and the client CA set, a CA removed from the file included), and no
        handshake sees a context half loaded."""
        listening = self._context_now()
        listening.sni_callback = self._switch
        return listening

    def _context_now(self) -> ssl.SSLContext:
        with self._lock:
            return self._context

    def _switch(self, connection, server_name: str | None, listening: ssl.SSLContext) -> None:
        current = self._context_now()
        if connection.context is not current:
            connection.context = current

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's callback at each TLS handshake: a new configuration once, else None (keep)."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._initial, self.fetch, require_client_authentication=self.mutual)


class ReloadingBearerTokens(grpc.aio.ServerInterceptor):
    """The bearer-token interceptor of api/auth.py over the tokens last read from
    `auth_tokens_file` (and SALIENCY_AUTH_TOKENS). A file left with no token is refused: the
    previous tokens stay (an empty set would refuse every call; turn auth off instead)."""

    def __init__(self, config: ServiceConfig, metrics: Metrics, tokens: frozenset[str]):
        self._config, self._metrics = config, metrics
        self._current = BearerTokenInterceptor(tokens, metrics)
        self.watched = _Watched("bearer tokens", [config.auth_tokens_file] if config.auth_tokens_file else [], self._swap)

    def _swap(self) -> str:
        tokens = self._config.auth_tokens()
        if not tokens:
            raise ValueError(f"{self._config.auth_tokens_file} holds no token")
        self._current = BearerTokenInterceptor(tokens, self._metrics)
        return f"{len(tokens)} tokens"

    async def intercept_service(self, continuation, details):
        return await self._current.intercept_service(continuation, details)

    def authorized(self, header: str) -> bool:
        """The HTTP API's check: an `Authorization` header against the tokens last read."""
        return self._current.authorized(header)


class Reloader:
    """Checks the watched files every `interval_s` (0: only when asked) and on `request()`."""

    def __init__(self, watched: Sequence[_Watched], interval_s: float):
        self._watched = [w for w in watched if w.paths]
        self._interval = interval_s if interval_s > 0 else None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._watched:
            self._task = asyncio.create_task(self._run(), name="reload-certificates-and-tokens")

    def request(self) -> None:
        """Check now (SIGHUP); safe from a signal handler on the loop."""
        self._wake.set()

    async def check(self) -> bool:
        """Check every watched set once, off the event loop; True if anything was reloaded."""
        loop = asyncio.get_running_loop()
        results = [await loop.run_in_executor(None, w.check) for w in self._watched]
        return any(results)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.check()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
