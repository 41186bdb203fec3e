"""The load test's HTTP users: defined only when SALIENCY_LOADTEST_HTTP names the API, and a
short real run of `saliency loadtest --http` in which both gRPC and HTTP users succeed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from saliency import loadtest
from test_loadtest import LOCUSTFILE, REQUEST_NAMES, ROOT, headless_run

HTTP_NAMES = {"HTTP explain fast", "HTTP explain fast+ig32", "HTTP explainStream first",
              "HTTP explainStream deep map", "HTTP explainStream complete"}
_USERS = """
import importlib.util, json, sys
import locust
spec = importlib.util.spec_from_file_location("locustfile", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, locust.User)
                        and v not in (locust.User, locust.HttpUser) and not v.__dict__.get("abstract", False))))
"""


@pytest.mark.parametrize(("http", "users"), [("", ["ExplainerUser"]),
                                             ("http://127.0.0.1:8080", ["ExplainerUser", "HttpExplainerUser"])])
def test_http_users_run_only_when_the_api_is_named(http, users):
    env = {k: v for k, v in os.environ.items() if k != "SALIENCY_LOADTEST_HTTP"}
    if http:
        env["SALIENCY_LOADTEST_HTTP"] = http
    result = subprocess.run([sys.executable, "-c", _USERS, str(LOCUSTFILE)], capture_output=True, text=True,
                            timeout=120, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == users


def test_a_bad_http_url_is_a_usage_error(tmp_path, capsys):
    assert loadtest.main(["--server", "127.0.0.1:1", "--http", "127.0.0.1:8080", "--out", str(tmp_path),
                          "--wait-ready", "0"]) == 2
    assert "--http" in capsys.readouterr().err


@pytest.mark.slow
def test_real_headless_run_with_http_users(tmp_path, capsys):
    _, rows = headless_run(tmp_path, capsys, 4, "8s", http=True)
    for name in HTTP_NAMES | {"Explain fast"}:
        assert name in rows and int(rows[name]["Request Count"]) > 0, name
        assert int(rows[name]["Failure Count"]) == 0, name
    assert REQUEST_NAMES & set(rows)
