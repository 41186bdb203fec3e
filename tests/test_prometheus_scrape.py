"""A real Prometheus server scrapes the service's /metrics and answers queries about it."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, method, png_bytes, with_config

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    binary = shutil.which("prometheus")  # Debian's prometheus
    assert binary, "prometheus is missing: run `make tools` (as root; `make test` does)"
    service = ServiceThread(with_config(models=("tinycnn",)))
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: saliency\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{service.service.metrics_port}']}}]\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield service, port
    finally:
        server.terminate()
        server.wait(timeout=30)
        service.stop()


def wait_for(port: int, promql: str, timeout: float = 45) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = query(port, promql)
            if result:
                return result
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never answered {promql!r}")


def test_prometheus_scrapes_request_counts_and_method_latency(scraped):
    service, port = scraped
    image = png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    stub = service.stub()
    for _ in range(3):
        stub.Explain(
            pb.ExplainRequest(model="tinycnn", image=image, methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_INTEGRATED_GRADIENTS, n_steps=8)]),
            timeout=30,
        )
    assert wait_for(port, 'up{job="saliency"} == 1')
    requests = wait_for(port, 'saliency_requests_total{rpc="Explain",model="tinycnn",code="OK"} >= 3')
    assert float(requests[0]["value"][1]) >= 3
    p99 = wait_for(
        port,
        'histogram_quantile(0.99, sum by (le, method) (saliency_method_latency_seconds_bucket{model="tinycnn"}))',
    )
    assert {r["metric"]["method"] for r in p99} == {"gradcam", "ig"}
    assert all(float(r["value"][1]) > 0 for r in p99)
