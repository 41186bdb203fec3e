"""Bearer-token auth (health exempt) and TLS / mutual TLS on the gRPC port."""

from __future__ import annotations

import datetime

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc
from service_harness import ServiceThread, with_config

TINY = {"models": ("tinycnn",)}


def list_models(channel, token: str | None = None):
    metadata = [("authorization", f"Bearer {token}")] if token else None
    return pb_grpc.ExplainerStub(channel).ListModels(pb.ListModelsRequest(), timeout=10, metadata=metadata)


@pytest.fixture(scope="module")
def authed(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text("# one per line\nsecret-one\nsecret-two\n")
    running = ServiceThread(with_config(auth_tokens_file=str(tokens), **TINY))
    yield running
    running.stop()


@pytest.mark.parametrize("token", [None, "wrong", "secret-on"])
def test_missing_or_wrong_token_is_unauthenticated(authed, token):
    with pytest.raises(grpc.RpcError) as info:
        list_models(authed.channel(), token)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in info.value.details()


def test_every_configured_token_is_accepted(authed):
    for token in ("secret-one", "secret-two"):
        assert list_models(authed.channel(), token).models[0].name == "tinycnn"


def test_streaming_rpc_is_guarded_too(authed):
    stream = pb_grpc.ExplainerStub(authed.channel()).ExplainStream(pb.ExplainRequest(model="tinycnn"), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_token(authed):
    status = health_pb2_grpc.HealthStub(authed.channel()).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def _certificate(name: str, issuer_key=None, issuer_name=None, is_ca=False):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return key, cert, key_pem, cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, _, ca_pem = _certificate("test-ca", is_ca=True)
    files = {"ca.pem": ca_pem}
    for name in ("server", "client"):
        _, _, key_pem, cert_pem = _certificate("localhost" if name == "server" else "client", ca_key, ca_cert.subject)
        files[f"{name}.key"], files[f"{name}.pem"] = key_pem, cert_pem
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_tls_serves_clients_that_trust_the_ca(pki):
    running = ServiceThread(with_config(tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key"), **TINY))
    try:
        trusted = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        assert list_models(running.channel(trusted)).models[0].name == "tinycnn"
        with pytest.raises(grpc.RpcError) as info:
            list_models(running.channel())  # plaintext against a TLS port
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


def test_mutual_tls_requires_a_client_certificate(pki):
    config = with_config(
        tls_cert_file=str(pki / "server.pem"),
        tls_key_file=str(pki / "server.key"),
        tls_client_ca_file=str(pki / "ca.pem"),
        **TINY,
    )
    running = ServiceThread(config)
    try:
        ca = (pki / "ca.pem").read_bytes()
        with_cert = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes())
        assert list_models(running.channel(with_cert)).models[0].name == "tinycnn"
        with pytest.raises(grpc.RpcError) as info:
            list_models(running.channel(grpc.ssl_channel_credentials(ca)))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()
