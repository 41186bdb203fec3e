"""Load spread on scale-out. A Kubernetes Service balances connections, not calls: a client
keeps the pod it first reached for as long as its connection lives. Here two real servers sit
behind a TCP proxy that hands each new connection to the next server in turn (what kube-proxy
does for a ClusterIP), and one client channel makes calls for a few seconds:

- without a connection age, every call lands on one server;
- with `max_connection_age_s`, the server sends GOAWAY, the channel reconnects through the
  proxy, and calls reach both servers;
- with a target that lists both addresses (what `dns:///` on the headless Service resolves to),
  the client's round_robin policy spreads calls at once.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from saliency.client import ExplainerClient
from service_harness import ServiceThread, with_config

CALL_SECONDS = 4.0


class ConnectionBalancer:
    """A TCP proxy on 127.0.0.1 that sends each new connection to the next backend in turn."""

    def __init__(self, backends: list[tuple[str, int]]):
        self.backends = backends
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            backend = socket.create_connection(self.backends[self.connections % len(self.backends)])
            self.connections += 1
            for a, b in ((client, backend), (backend, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closing = True
        self.listener.close()


@pytest.fixture
def servers(request):
    """Two real services (tinycnn) with the connection age of the test's parameter."""
    age = request.param
    running = [
        ServiceThread(with_config(models=("tinycnn",), max_connection_age_s=age, max_connection_age_grace_s=age))
        for _ in range(2)
    ]
    yield running
    for service in running:
        service.stop()


def calls_per_server(servers: list[ServiceThread], target: str) -> list[float]:
    """ListModels on one channel to `target` for CALL_SECONDS; how many each server answered."""
    with ExplainerClient(target, timeout=10) as client:
        deadline = time.monotonic() + CALL_SECONDS
        while time.monotonic() < deadline:
            client.list_models()
            time.sleep(0.02)
    labels = {"rpc": "ListModels", "model": "", "code": "OK"}
    return [service.metric("saliency_requests_total", labels) for service in servers]


@pytest.mark.parametrize("servers", [0.0], indirect=True)
def test_without_a_connection_age_one_channel_stays_on_one_server(servers):
    balancer = ConnectionBalancer([("127.0.0.1", s.service.port) for s in servers])
    try:
        counts = calls_per_server(servers, f"127.0.0.1:{balancer.port}")
    finally:
        balancer.close()
    assert sum(counts) > 50 and min(counts) == 0, counts
    assert balancer.connections == 1


@pytest.mark.parametrize("servers", [1.0], indirect=True)
def test_a_connection_age_cycle_moves_the_channel_to_the_other_server(servers):
    balancer = ConnectionBalancer([("127.0.0.1", s.service.port) for s in servers])
    try:
        counts = calls_per_server(servers, f"127.0.0.1:{balancer.port}")
    finally:
        balancer.close()
    assert balancer.connections >= 2, "the server never asked the channel to reconnect"
    assert min(counts) > 0, counts


@pytest.mark.parametrize("servers", [0.0], indirect=True)
def test_round_robin_over_every_address_of_the_target(servers):
    """The headless Service's DNS answer is every ready pod: the client calls them in turn."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.service.port}" for s in servers)
    counts = calls_per_server(servers, target)
    assert min(counts) > 0.3 * sum(counts), counts
