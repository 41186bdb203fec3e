"""Certificate and token rotation without a restart: a real server re-reads its TLS files and
its tokens file when they change (polled, or on SIGHUP for `saliency serve`); material that
does not work is refused and the previous one stays in service."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import ssl
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc
from service_harness import ServerProcess, ServiceThread, with_config

TINY = {"models": ("tinycnn",), "reload_interval_s": 0.0}  # reloads only when the test asks


def issue(name: str, ca: tuple | None = None) -> tuple[bytes, bytes, tuple]:
    """(key PEM, certificate PEM, (key, certificate) to sign others with); self-signed CA when
    `ca` is None, else a localhost server certificate signed by `ca`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca[1].subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(ca[0] if ca else key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM), (key, cert)


def replace(path: Path, data: bytes) -> None:
    """Write beside, then rename over: what a Secret volume update looks like to a reader."""
    fresh = path.with_suffix(".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


def list_models(channel: grpc.Channel, token: str | None = None) -> pb.ListModelsResponse:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with channel:
        return pb_grpc.ExplainerStub(channel).ListModels(pb.ListModelsRequest(), timeout=10, metadata=metadata)


def tls_channel(address: str, ca_pem: bytes) -> grpc.Channel:
    return grpc.secure_channel(
        address, grpc.ssl_channel_credentials(root_certificates=ca_pem),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


def test_a_renewed_certificate_is_served_to_new_connections(tmp_path, caplog):
    _, old_ca_pem, old_ca = issue("old-ca")
    _, new_ca_pem, new_ca = issue("new-ca")
    key_pem, cert_pem, _ = issue("localhost", old_ca)
    key, cert = tmp_path / "tls.key", tmp_path / "tls.crt"
    key.write_bytes(key_pem)
    cert.write_bytes(cert_pem)
    service = ServiceThread(with_config(tls_cert_file=str(cert), tls_key_file=str(key), **TINY))
    try:
        assert list_models(tls_channel(service.address, old_ca_pem)).models

        # Renewal by a new CA: key first, then certificate, as two separate updates.
        new_key_pem, new_cert_pem, _ = issue("localhost", new_ca)
        replace(key, new_key_pem)
        with caplog.at_level(logging.ERROR, logger="saliency.api.reload"):
            # The key alone does not match the old certificate: refused, the old pair serves on.
            assert service.call(service.service.reloader.check()) is False
        assert "refused" in caplog.text
        assert list_models(tls_channel(service.address, old_ca_pem)).models
        replace(cert, new_cert_pem)
        assert service.call(service.service.reloader.check()) is True
        assert list_models(tls_channel(service.address, new_ca_pem)).models
        with pytest.raises(grpc.RpcError) as refused:
            list_models(tls_channel(service.address, old_ca_pem))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails

        # A half-written certificate is refused too; the renewed one stays.
        replace(cert, new_cert_pem[: len(new_cert_pem) // 2])
        assert service.call(service.service.reloader.check()) is False
        assert list_models(tls_channel(service.address, new_ca_pem)).models
    finally:
        service.stop()


def test_a_rotated_tokens_file_takes_effect_and_an_empty_one_is_refused(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token\n")
    service = ServiceThread(with_config(auth_tokens_file=str(tokens), **TINY))
    try:
        assert list_models(service.channel(), "first-token").models
        replace(tokens, b"# rotated\nsecond-token\n")
        assert service.call(service.service.reloader.check()) is True
        assert list_models(service.channel(), "second-token").models
        with pytest.raises(grpc.RpcError) as revoked:
            list_models(service.channel(), "first-token")
        assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED

        replace(tokens, b"\n")  # nothing left: would refuse everyone
        assert service.call(service.service.reloader.check()) is False
        assert list_models(service.channel(), "second-token").models
        assert service.call(service.service.reloader.check()) is False  # unchanged: not retried
    finally:
        service.stop()


@pytest.mark.slow
def test_serve_reloads_tokens_on_sighup_and_by_polling(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token\n")
    server = ServerProcess(
        "--models", "tinycnn", "--max-chunk", "4", "--max-chunk-forward", "4",
        "--auth-tokens-file", str(tokens), "--reload-interval-s", "0",
        env={"SALIENCY_CACHE_DIR": str(tmp_path)},
    )
    try:
        assert list_models(server.channel(), "first-token").models
        replace(tokens, b"second-token\n")
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded the bearer tokens" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list_models(server.channel(), "second-token").models
        assert server.process.poll() is None, "SIGHUP must not stop the server"
    finally:
        server.stop()
    assert "reloaded the bearer tokens (1 tokens)" in server.output()

    polled = ServiceThread(with_config(auth_tokens_file=str(tokens), models=("tinycnn",), reload_interval_s=0.1))
    try:
        replace(tokens, b"third-token\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                list_models(polled.channel(), "third-token")
                break
            except grpc.RpcError:
                time.sleep(0.05)
        assert list_models(polled.channel(), "third-token").models
    finally:
        polled.stop()


def https_models(port: int, server_ca: bytes, client: tuple[bytes, bytes] | None, folder: Path) -> int:
    """GET /v1/models over HTTPS: the status, or raise ssl.SSLError / OSError if the handshake
    fails. The server CA is verified (the host name is not: the certificate names localhost)."""
    import http.client
    import ssl

    context = ssl.create_default_context(cadata=server_ca.decode())
    context.check_hostname = False
    if client is not None:
        key_path, cert_path = folder / "client.key", folder / "client.crt"
        key_path.write_bytes(client[0])
        cert_path.write_bytes(client[1])
        context.load_cert_chain(str(cert_path), str(key_path))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", "/v1/models")
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_https_api_follows_a_renewed_certificate_and_client_ca_whole(tmp_path):
    """The HTTP API's handshakes move onto a context made whole from the reloaded material: the
    new certificate is served, and a client CA removed from the file is no longer trusted (the
    live context used to be reloaded in place, where OpenSSL can only add CAs)."""
    _, server_ca_pem, server_ca = issue("server-ca")
    _, new_server_ca_pem, new_server_ca = issue("new-server-ca")
    _, old_clients_pem, old_clients = issue("old-client-ca")
    _, new_clients_pem, new_clients = issue("new-client-ca")
    old_client, new_client = issue("client", old_clients)[:2], issue("client", new_clients)[:2]
    key_pem, cert_pem, _ = issue("localhost", server_ca)
    key, cert, client_ca = tmp_path / "tls.key", tmp_path / "tls.crt", tmp_path / "clients.crt"
    key.write_bytes(key_pem)
    cert.write_bytes(cert_pem)
    client_ca.write_bytes(old_clients_pem)
    service = ServiceThread(with_config(
        tls_cert_file=str(cert), tls_key_file=str(key), tls_client_ca_file=str(client_ca), **TINY
    ))
    try:
        port = service.service.http_port
        assert https_models(port, server_ca_pem, old_client, tmp_path) == 200
        with pytest.raises((ssl.SSLError, OSError)):  # no client certificate: refused
            https_models(port, server_ca_pem, None, tmp_path)

        new_key_pem, new_cert_pem, _ = issue("localhost", new_server_ca)
        replace(client_ca, new_clients_pem)
        replace(key, new_key_pem)
        replace(cert, new_cert_pem)
        assert service.call(service.service.reloader.check()) is True
        assert https_models(port, new_server_ca_pem, new_client, tmp_path) == 200
        with pytest.raises((ssl.SSLError, OSError)):  # the old client CA is gone from the file
            https_models(port, new_server_ca_pem, old_client, tmp_path)
        with pytest.raises(ssl.SSLError):  # the old server certificate is no longer served
            https_models(port, server_ca_pem, new_client, tmp_path)
        # gRPC serves the same material.
        channel = grpc.secure_channel(
            service.address,
            grpc.ssl_channel_credentials(new_server_ca_pem, new_client[0], new_client[1]),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        assert list_models(channel).models
    finally:
        service.stop()
