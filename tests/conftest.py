"""Shared fixtures: models load once per session; chunk-size measurements go to a temp dir.

Tests that start a server (gRPC, HTTP, TorchServe, Prometheus), run helm or any subprocess are
marked `integration` here, from their own code and every fixture they use. `slow` means the
cost is the point (EfficientNet-Lite0 on real photographs, training to convergence): tests of
the fixtures in _SLOW_FIXTURES and the tests in _SLOW_TESTS are marked here, a few more in their
files. `make test-unit` (`-m "not integration and not slow"`) runs without both; `make test` (CI)
runs everything. Under SALIENCY_UNIT_TESTS=1 (set by `make test-unit`), starting a gRPC server
or a subprocess anyway fails the test, naming the fix: the marking cannot silently miss one.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import subprocess
import sys
import tempfile

import pytest
import skimage.data
import torch

# Measured chunk sizes are cached on disk; keep tests from writing to the user's home.
os.environ.setdefault("SALIENCY_CACHE_DIR", tempfile.mkdtemp(prefix="saliency-test-cache-"))

from saliency.imaging import to_model_input  # noqa: E402
from saliency.models import load_model  # noqa: E402

# What starts a server or a process: the service (ServiceThread, ServerProcess, start_service),
# a gRPC or HTTP server, TorchServe (TorchServeProcess.start(...)), helm/make, Prometheus and
# other subprocesses, a browser. Not the bare words torchserve/prometheus: tests that only read
# deploy files or name the backend start nothing (and the guard below catches a miss).
_STARTS_SOMETHING = re.compile(
    r"\b(ServiceThread|ServerProcess|start_service|run_server|grpc\.(aio\.)?server|uvicorn|"
    r"TorchServe\w*(\.\w+)*\(|subprocess\.|Popen|multiprocessing|"
    r"sync_playwright|async_playwright)|\"make\""
)


@functools.cache
def _source(function) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):  # built-in fixtures (tmp_path, ...): no source, start nothing
        return ""


def _starts_something(function) -> bool:
    return bool(_STARTS_SOMETHING.search(_source(function)))


@functools.cache
def _starter_names(module) -> re.Pattern | None:
    """Calls of the module's own functions that start something, directly or through one
    another (a test that calls `start_server(...)` is as integration as one that uses a fixture)."""
    functions = {
        name: f for name, f in vars(module).items()
        if inspect.isfunction(f) and f.__module__ == module.__name__
    }
    starters = {name for name, f in functions.items() if _starts_something(f)}
    while True:
        if not starters:
            return None
        calls = re.compile(r"\b(" + "|".join(map(re.escape, sorted(starters))) + r")\(")
        more = {name for name, f in functions.items() if name not in starters and _calls(f, calls)}
        if not more:
            return calls
        starters |= more


def _calls(function, calls: re.Pattern) -> bool:
    return bool(calls.search(_source(function)))


def _is_integration(item: pytest.Item) -> bool:
    functions = [getattr(item, "function", None)]
    definitions = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        if name == "_unit_tests_start_nothing":  # the guard below names what it refuses
            continue
        functions += [f.func for f in (definitions.name2fixturedefs.get(name, ()) if definitions else ())]
    calls = _starter_names(item.module) if getattr(item, "module", None) else None
    return any(
        f is not None and (_starts_something(f) or (calls is not None and _calls(f, calls))) for f in functions
    )


# Fixtures whose users take seconds each on the CPU: EfficientNet-Lite0 at 224x224, and
# tests/test_roar.py's quick ROAR run (retraining per fraction).
_SLOW_FIXTURES = {"effnet", "chelsea", "quick_run"}

# Tests whose cost is the point, by "module::name" (every parametrisation), with the reason.
_SLOW_TESTS = {
    # tinyvit_digits is trained on first use (weights cached in the session's temp dir): each
    # of these would pay the training (~5 s on one thread, ~40 s on two busy cores) alone.
    "test_tinyvit_digits.py::test_trained_vit_reaches_its_accuracy_floor": "trains to an accuracy floor",
    "test_tinyvit_digits.py::test_rollout_differs_from_the_random_weight_vits": "needs the trained ViT",
    "test_tinyvit_digits.py::test_attention_agreement_numbers_are_correlations": "needs the trained ViT",
}


def _is_slow(item: pytest.Item) -> bool:
    name = getattr(item, "originalname", item.name)
    return bool(_SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))) or (
        f"{os.path.basename(str(item.path))}::{name}" in _SLOW_TESTS
    )


def pytest_collection_modifyitems(config, items):
    integration = pytest.mark.integration
    for item in items:
        if _is_integration(item):
            item.add_marker(integration)
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS = tuple(os.path.join(_REPOSITORY, d) + os.sep for d in ("tests", "service", "handlers", "bench"))


def _refuse(what: str, original, only_ours: bool = False):
    """A stand-in that fails the test; with only_ours, just for calls from this repository's
    code (the standard library runs subprocesses of its own, e.g. platform.processor())."""

    def refuse(*args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if only_ours and not caller.startswith(_OURS):
            return original(*args, **kwargs)
        raise RuntimeError(
            f"a unit test started {what}: mark it `integration` (or use a fixture that does) "
            "so `make test-unit` leaves it to `make test`"
        )

    return refuse


@pytest.fixture(autouse=True)
def _unit_tests_start_nothing(request, monkeypatch):
    if os.environ.get("SALIENCY_UNIT_TESTS") != "1" or "integration" in request.keywords:
        return
    import grpc
    import grpc.aio

    monkeypatch.setattr(grpc, "server", _refuse("a gRPC server", grpc.server))
    monkeypatch.setattr(grpc.aio, "server", _refuse("a gRPC server", grpc.aio.server))
    for name in ("run", "check_output", "check_call", "call"):
        original = getattr(subprocess, name)
        monkeypatch.setattr(subprocess, name, _refuse("a subprocess", original, only_ours=True))
    # Popen itself too (ServerProcess, TorchServe, the load test start processes with it); the
    # class stays a class, so annotations and isinstance checks still work.
    init = subprocess.Popen.__init__
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("a subprocess", init, only_ours=True))


@pytest.fixture(scope="session")
def tiny():
    return load_model("tinycnn")


@pytest.fixture(scope="session")
def tiny_vit():
    return load_model("tinyvit")


@pytest.fixture(scope="session")
def effnet():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def chelsea(effnet) -> torch.Tensor:
    """The cat photograph as EfficientNet-Lite0 input [3, 224, 224]."""
    return to_model_input(skimage.data.chelsea(), effnet.spec)


@pytest.fixture(scope="session")
def tiny_images(tiny) -> torch.Tensor:
    """Three different deterministic tinycnn inputs [3, 3, 32, 32]."""
    g = torch.Generator().manual_seed(1234)
    return torch.randn(3, 3, 32, 32, generator=g)
