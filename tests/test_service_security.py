"""Bearer-token auth (health exempt) and TLS / mutual TLS on the gRPC port; settings fail closed
(partial TLS or an empty token set refuses to start) and the effective mode is logged."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saliency.runtime.config import ServiceConfig, load_config
from saliency.server import start_service
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc
from service_harness import ServiceThread, free_port, with_config

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


@pytest.mark.parametrize("header", ["bearer secret-one", "BEARER secret-two", "Bearer  secret-one "])
def test_the_auth_scheme_is_case_insensitive(authed, header):
    """RFC 9110: `bearer` in any case; the token itself is compared exactly."""
    response = pb_grpc.ExplainerStub(authed.channel()).ListModels(
        pb.ListModelsRequest(), timeout=10, metadata=(("authorization", header),)
    )
    assert response.models[0].name == "tinycnn"
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.ExplainerStub(authed.channel()).ListModels(
            pb.ListModelsRequest(), timeout=10, metadata=(("authorization", "bearer SECRET-ONE"),)
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_streaming_rpc_is_guarded_too(authed):
    stream = pb_grpc.ExplainerStub(authed.channel()).ExplainStream(pb.ExplainRequest(model="tinycnn"), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_token(authed):
    status = health_pb2_grpc.HealthStub(authed.channel()).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("rpc", ["Explain", "ExplainStream"])
def test_an_unauthenticated_body_is_refused_before_it_is_parsed(authed, caplog, rpc):
    """Garbage bytes without a token: UNAUTHENTICATED, and no deserializer ran (it used to log
    an ERROR traceback and answer UNKNOWN)."""
    caplog.set_level(logging.WARNING)
    channel = authed.channel()
    path = f"/saliency.v1.Explainer/{rpc}"
    garbage = b"\xff\xff\xff\xff not a protobuf"
    with pytest.raises(grpc.RpcError) as info:
        if rpc == "Explain":
            channel.unary_unary(path)(garbage, timeout=10)
        else:
            list(channel.unary_stream(path)(garbage, timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()
    assert "Bearer" in info.value.details()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


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


def security_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "saliency.server" and "security:" in r.getMessage()]


def test_plaintext_with_tokens_logs_its_security_mode(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="saliency.server")
    monkeypatch.setenv("SALIENCY_AUTH_TOKENS", "env-token")
    tokens = tmp_path / "tokens"
    tokens.write_text("file-token\n")
    running = ServiceThread(with_config(auth_tokens_file=str(tokens), **TINY))
    try:
        assert list_models(running.channel(), "env-token").models and list_models(running.channel(), "file-token").models
    finally:
        running.stop()
    assert security_lines(caplog) == ["security: plaintext (no TLS); auth on (2 tokens)"]


def test_tls_serves_clients_that_trust_the_ca(pki, caplog):
    caplog.set_level(logging.INFO, logger="saliency.server")
    running = ServiceThread(with_config(tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key"), **TINY))
    assert security_lines(caplog) == ["security: TLS; auth off"]
    try:
        trusted = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        assert list_models(running.channel(trusted)).models[0].name == "tinycnn"
        with pytest.raises(grpc.RpcError) as info:
            list_models(running.channel())  # plaintext against a TLS port
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


def test_mutual_tls_requires_a_client_certificate(pki, caplog):
    caplog.set_level(logging.INFO, logger="saliency.server")
    config = with_config(
        tls_cert_file=str(pki / "server.pem"),
        tls_key_file=str(pki / "server.key"),
        tls_client_ca_file=str(pki / "ca.pem"),
        **TINY,
    )
    running = ServiceThread(config)
    assert security_lines(caplog) == ["security: mTLS (client certificates required); auth off"]
    try:
        ca = (pki / "ca.pem").read_bytes()
        with_cert = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes())
        assert list_models(running.channel(with_cert)).models[0].name == "tinycnn"
        with pytest.raises(grpc.RpcError) as info:
            list_models(running.channel(grpc.ssl_channel_credentials(ca)))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


# ------------------------------------------------------------------------ fail closed

PARTIAL_TLS = {
    "cert alone": ({"tls_cert_file": "server.pem"}, ["tls_key_file"]),
    "key alone": ({"tls_key_file": "server.key"}, ["tls_cert_file"]),
    "client CA alone": ({"tls_client_ca_file": "ca.pem"}, ["tls_cert_file", "tls_key_file"]),
    "client CA and cert": ({"tls_client_ca_file": "ca.pem", "tls_cert_file": "server.pem"}, ["tls_key_file"]),
    "client CA and key": ({"tls_client_ca_file": "ca.pem", "tls_key_file": "server.key"}, ["tls_cert_file"]),
}


def refused_to_start(config: ServiceConfig) -> str:
    """start_service(config) must raise ValueError without opening its port; the message."""
    with pytest.raises(ValueError) as info:
        asyncio.run(start_service(config))
    with socket.socket() as s:
        s.bind((config.host, config.port))  # still free: nothing was bound
    return str(info.value)


@pytest.mark.parametrize(("files", "missing"), PARTIAL_TLS.values(), ids=PARTIAL_TLS.keys())
def test_partial_tls_refuses_to_load(pki, files, missing):
    """Partial TLS used to serve plaintext without client authentication (or crash with
    IsADirectoryError '.')."""
    overrides = {name: str(pki / file) for name, file in files.items()}
    with pytest.raises(ValueError) as info:
        load_config(env={}, overrides=overrides)
    for name in missing:
        assert name in str(info.value)


@pytest.mark.parametrize(("files", "missing"), PARTIAL_TLS.values(), ids=PARTIAL_TLS.keys())
def test_partial_tls_refuses_to_start(pki, files, missing):
    config = with_config(port=free_port(), **{name: str(pki / file) for name, file in files.items()}, **TINY)
    message = refused_to_start(config)
    for name in missing:
        assert name in message


@pytest.mark.parametrize(("setting", "file"), [("tls_cert_file", "server.key"), ("tls_key_file", "server.pem"), ("tls_client_ca_file", "server.key")])
def test_a_tls_file_of_the_wrong_kind_is_refused_naming_its_setting(pki, setting, file):
    files = {"tls_cert_file": "server.pem", "tls_key_file": "server.key", "tls_client_ca_file": "ca.pem", setting: file}
    config = with_config(port=free_port(), **{name: str(pki / f) for name, f in files.items()}, **TINY)
    assert setting in refused_to_start(config)


def test_a_missing_tls_file_is_refused_naming_its_setting(pki, tmp_path):
    config = with_config(
        port=free_port(), tls_cert_file=str(pki / "server.pem"), tls_key_file=str(tmp_path / "absent.key"), **TINY
    )
    message = refused_to_start(config)
    assert "tls_key_file" in message and "absent.key" in message


@pytest.mark.parametrize("value", [" , ", ",", "# a comment"])
def test_an_auth_token_variable_without_a_token_refuses_to_start(monkeypatch, value):
    """SALIENCY_AUTH_TOKENS=" , " used to turn auth silently off."""
    with pytest.raises(ValueError, match="SALIENCY_AUTH_TOKENS"):
        load_config(env={"SALIENCY_AUTH_TOKENS": value})
    monkeypatch.setenv("SALIENCY_AUTH_TOKENS", value)
    assert "SALIENCY_AUTH_TOKENS" in refused_to_start(with_config(port=free_port(), **TINY))


def test_an_empty_auth_token_variable_means_auth_off(monkeypatch):
    """compose passes SALIENCY_AUTH_TOKENS="" when no token is given: that is "not set"."""
    monkeypatch.setenv("SALIENCY_AUTH_TOKENS", "")
    assert load_config(env={"SALIENCY_AUTH_TOKENS": ""}).auth_tokens() == frozenset()


@pytest.mark.parametrize("content", ["", "\n\n", "# only comments\n  # and blanks\n\n"])
def test_a_tokens_file_without_a_token_refuses_to_start(tmp_path, monkeypatch, content):
    monkeypatch.delenv("SALIENCY_AUTH_TOKENS", raising=False)
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    message = refused_to_start(with_config(port=free_port(), auth_tokens_file=str(tokens), **TINY))
    assert "auth_tokens_file" in message and str(tokens) in message


def test_a_missing_tokens_file_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv("SALIENCY_AUTH_TOKENS", "env-token")  # a token elsewhere does not excuse it
    message = refused_to_start(with_config(port=free_port(), auth_tokens_file=str(tmp_path / "absent"), **TINY))
    assert "auth_tokens_file" in message and "absent" in message
