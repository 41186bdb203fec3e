"""The torchserve backend when things go wrong (issue 12): the service killed, TorchServe
overloaded or stalled, keys refused by many calls at once, deadlines and cancels, rows of
the wrong shape. Against a real TorchServe 0.12 over loopback, no mocks.

One TorchServe (tinycnn only, a tiny job queue so that a burst overflows it) serves the
module; the SIGKILL test starts `saliency serve --backend torchserve` as its own process,
which launches its own TorchServe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import torch
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.registry import make_params
from saliency.attribution.types import Targets
from saliency.codec import convert, method_params, tensors
from saliency.torchserve.batch import BatchRunner, HandlerSettings, RowInput
from saliency.torchserve.process import (
    KeyFile,
    TorchServeProcess,
    read_properties,
    write_properties,
)
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import torchserve_pb2 as reply_pb
from service_harness import ServerProcess, ServiceThread, with_config

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "model_store"
DEPLOY_CONFIG = ROOT / "deploy" / "torchserve" / "config.properties"
SERVING = health_pb2.HealthCheckResponse.SERVING

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17 (java on PATH)")


# ---- helpers ----------------------------------------------------------------------------------


def tiny_input(seed: int, size: int = 32) -> torch.Tensor:
    return torch.randn(3, size, size, generator=torch.Generator().manual_seed(seed))


def explain_request(x: torch.Tensor, methods: dict, targets: Targets, model: str = "tinycnn") -> pb.ExplainRequest:
    request = pb.ExplainRequest(
        model=model,
        targets=convert.targets_to_proto(targets),
        methods=method_params.method_requests_to_proto(methods),
    )
    request.tensor.CopyFrom(tensors.tensor_to_proto(x))
    return request


def live(pids) -> list[int]:
    """The pids that still run (a zombie waiting for a reaper has stopped running)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def group_members(pgid: int) -> list[int]:
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                members.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return live(members)


def kill_group(pgid: int) -> None:
    """Test cleanup: end what a failing test left behind of one TorchServe (its group only)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def health_status(service: ServiceThread) -> int:
    return health_pb2_grpc.HealthStub(service.channel()).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def wait_for_health(service: ServiceThread, status: int, timeout: float) -> float:
    """Seconds until health says `status`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if health_status(service) == status:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"health did not become {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")


class HealthWatch:
    """Polls grpc.health.v1 Check every 50 ms on a thread; `.statuses` is what it saw."""

    def __init__(self, service: ServiceThread):
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._stub = health_pb2_grpc.HealthStub(service.channel())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.statuses.append(self._stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
            time.sleep(0.05)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.statuses


# ---- defect 9: TorchServe dies with the service -------------------------------------------------


@pytest.fixture(scope="module")
def archives() -> Path:
    subprocess.run(["make", "-s", "models"], cwd=ROOT, check=True, timeout=900)
    return STORE


def test_sigkill_of_the_service_takes_its_torchserve_and_key_file_along(archives):
    """`kill -9` of `saliency serve --backend torchserve`: within seconds, no process of the
    TorchServe it started (launcher, JVM, workers) runs and its work dir with key_file.json is gone."""
    server = ServerProcess(
        "--backend", "torchserve", "--models", "tinycnn", "--torchserve-model-store", str(archives),
        "--torchserve-config", str(DEPLOY_CONFIG),
    )
    groups: set[int] = set()
    started = None
    try:
        started = re.search(r"starting TorchServe \(pid (\d+)\) in (\S+),", server.output())
        assert started, server.output()
        workdir = Path(started.group(2))
        key_file = workdir / "key_file.json"
        assert key_file.is_file()
        descendants = psutil.Process(server.process.pid).children(recursive=True)
        groups = {os.getpgid(p.pid) for p in descendants}
        assert groups == {int(started.group(1))}  # one process group, separate from the service's
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        assert "org.pytorch.serve.ModelServer" in names and "model_service_worker" in names, names
        pids = [p.pid for p in descendants]
        assert len(live(pids)) >= 4  # launcher, JVM, a worker per registration (and the watchdog)

        server.process.kill()  # SIGKILL: no handler, no atexit, no finally runs in the service
        server.process.wait(timeout=10)
        deadline = time.monotonic() + 20
        while (live(pids) or key_file.exists()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert live(pids) == [], [psutil.Process(p).cmdline() for p in live(pids)]
        assert all(group_members(g) == [] for g in groups)
        assert not key_file.exists() and not workdir.exists()
    finally:
        server.stop()
        for group in groups:
            kill_group(group)
        if started:
            shutil.rmtree(started.group(2), ignore_errors=True)


def test_a_later_start_sweeps_work_dirs_whose_service_and_watchdog_are_gone(tmp_path):
    """Second line behind the watchdog: were it killed with the service, the next start ends
    what is left of that TorchServe (by process group and work dir) and removes the dir."""
    from saliency.torchserve.process import (
        OWNER_FILE,
        WORKDIR_PREFIX,
        _start_time,
        sweep_stale_workdirs,
    )

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, current = tmp_path / (WORKDIR_PREFIX + "stale"), tmp_path / (WORKDIR_PREFIX + "current")
    for workdir in (stale, current):
        (workdir / "tmp").mkdir(parents=True)
        (workdir / "key_file.json").write_text("{}")
    # A process of the dead TorchServe: in the dead watchdog's group, naming the work dir. And a
    # process that names the dir but belongs to another group: never touched.
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    left = subprocess.Popen([*sleeper, f"--sock-name={stale}/tmp/.ts.sock.9000"], start_new_session=True)
    other = subprocess.Popen([*sleeper, str(stale)], start_new_session=True)
    try:
        gone = {"pid": dead.pid, "start": 1}
        (stale / OWNER_FILE).write_text(json.dumps({"service": gone, "watchdog": gone, "group": left.pid}))
        me = {"pid": os.getpid(), "start": _start_time(os.getpid())}
        (current / OWNER_FILE).write_text(json.dumps({"service": me, "watchdog": gone, "group": other.pid}))
        (tmp_path / (WORKDIR_PREFIX + "foreign")).mkdir()  # no owner file: not ours to judge

        assert sweep_stale_workdirs(tmp_path) == [stale]
        assert left.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None
        assert not stale.exists() and current.exists() and (tmp_path / (WORKDIR_PREFIX + "foreign")).exists()
    finally:
        for process in (left, other):
            process.kill()
            process.wait()


# ---- one TorchServe with a tiny job queue, and a service attached to it -------------------------

JOB_QUEUE_SIZE = 2


@pytest.fixture(scope="module")
def torchserve(archives, tmp_path_factory):
    settings = read_properties(DEPLOY_CONFIG)
    settings["job_queue_size"] = str(JOB_QUEUE_SIZE)
    config = tmp_path_factory.mktemp("ts-config") / "config.properties"
    write_properties(config, settings, "deploy/torchserve/config.properties with a tiny job queue")
    process = TorchServeProcess.start(archives, config, ["tinycnn"], timeout_s=300)
    yield process
    process.stop()
    assert not process.alive()


@pytest.fixture(scope="module")
def service(torchserve):
    service = ServiceThread(
        with_config(
            backend="torchserve",
            models=("tinycnn",),
            torchserve_address=torchserve.grpc_address,
            torchserve_key_file=str(torchserve.key_file),
            torchserve_management_address=torchserve.management_address,
        )
    )
    wait_for_health(service, SERVING, timeout=60)
    yield service
    service.stop()


# ---- defect 6: overload is RESOURCE_EXHAUSTED, and busy is not unhealthy -------------------------


def test_a_burst_over_torchserves_queue_is_resource_exhausted_and_health_stays_serving(service):
    """TorchServe 0.12 refuses a job when the registration's queue (job_queue_size) is full
    with gRPC INTERNAL "Model ... has no worker to serve inference request ...". The caller gets
    RESOURCE_EXHAUSTED saying the queue is full, and the pod stays in: SERVING throughout."""
    unavailable_before = service.metric(
        "saliency_rejected_total", {"model": "tinycnn", "reason": "backend_unavailable"}
    )
    overloaded_before = service.metric("saliency_rejected_total", {"model": "tinycnn", "reason": "overloaded"})
    n = 24
    requests = [
        explain_request(tiny_input(i), {"vanilla": None, "ig": {"n_steps": 64}}, Targets(classes=(i % 10,)))
        for i in range(n)
    ]
    barrier = threading.Barrier(n)

    def call(request):
        barrier.wait()
        try:
            service.stub().Explain(request, timeout=60)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details()

    watch = HealthWatch(service)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(call, requests))
    time.sleep(2.5)  # two more health probes: a failure counted by the burst would show now
    statuses = watch.stop()
    codes = [code for code, _ in outcomes]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, outcomes
    refused = [details for code, details in outcomes if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert refused and codes.count(grpc.StatusCode.OK) >= 1, outcomes
    assert all("queue for tinycnn" in d and "is full" in d and f"{JOB_QUEUE_SIZE} requests" in d for d in refused), refused
    assert statuses and set(statuses) == {SERVING}, statuses
    assert service.metric("saliency_rejected_total", {"model": "tinycnn", "reason": "overloaded"}) - overloaded_before >= len(refused)
    assert service.metric("saliency_rejected_total", {"model": "tinycnn", "reason": "backend_unavailable"}) == unavailable_before
    response = service.stub().Explain(requests[0], timeout=60)
    assert len(response.attributions) == 2


def test_a_stalled_frontend_keeps_serving_for_the_grace_then_not(service, torchserve):
    """A Ping that times out is a busy TorchServe, not a dead one: health keeps SERVING while
    the JVM does not answer, for health_grace_s; after that it is NOT_SERVING, until it answers."""
    backend = service.service.backend
    java = next(p for p in psutil.Process(torchserve.process.pid).children(recursive=True) if p.name() == "java")
    backend.health_grace_s = 6.0
    try:
        java.suspend()  # SIGSTOP: every Ping and management call now times out
        watch = HealthWatch(service)
        time.sleep(4.5)  # two probes of 2 s time out in this time
        statuses = watch.stop()
        assert statuses and set(statuses) == {SERVING}, statuses
        took = wait_for_health(service, health_pb2.HealthCheckResponse.NOT_SERVING, timeout=15)
        assert took < 10
    finally:
        java.resume()
        backend.health_grace_s = 30.0
    wait_for_health(service, SERVING, timeout=30)


# ---- defect 1: keys, deadlines and cancels give back what they hold -----------------------------


def test_calls_refused_together_for_a_rotated_key_all_retry_with_the_new_one(service, torchserve):
    """TorchServe's key rotated while calls were on their way with the old key: every refused
    call retries with the new key (not only the first one to re-read the file), and none of
    them renews the key again (a renewal revokes the key the others just read)."""
    backend = service.service.backend
    key_file = torchserve.key_file
    request = explain_request(tiny_input(3), {"vanilla": None}, Targets(classes=(1,)))

    async def rotate_then_call(n: int):
        old = backend.keys.inference_key()
        mtime = key_file.stat().st_mtime_ns
        other = KeyFile(key_file, torchserve.management_address)
        other.RENEW_BEFORE_S = 10**9
        assert other.renew_if_due()  # TorchServe now takes only the new key
        new = other.inference_key()
        # The file's mtime as it was: the backend keeps sending the old key it has read until
        # a refusal makes it look again. No await until every call has been sent.
        os.utime(key_file, ns=(mtime, mtime))
        deadline = time.monotonic() + 60
        calls = [backend._predict("tinycnn", request, deadline, "the fast pass") for _ in range(n)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return old, new, results

    old, new, results = service.call(rotate_then_call(3), timeout=120)  # 3: within the tiny queue
    assert old != new
    assert [type(r).__name__ for r in results] == ["HandlerReply"] * 3, [str(r) for r in results]
    assert KeyFile(key_file).inference_key() == new  # no call renewed it again
    wait_for_health(service, SERVING, timeout=30)


def test_deadlines_and_cancels_leave_no_request_in_flight(service):
    """Calls ended by their deadline or by the caller: the in-flight gauge is back at 0, each
    counted under its own reason, and the next call succeeds."""
    labels = {"model": "tinycnn"}
    reasons = {
        r: service.metric("saliency_rejected_total", {**labels, "reason": r}) for r in ("deadline", "cancelled", "overloaded")
    }
    slow = explain_request(
        tiny_input(4), {"ig": {"n_steps": 256}, "smoothgrad": {"n_samples": 512}}, Targets(classes=tuple(range(8)))
    )
    stub = service.stub()
    ended = {"DEADLINE_EXCEEDED": 0, "RESOURCE_EXHAUSTED": 0}
    for _ in range(3):  # admission refuses at once what it can tell will not make it
        with pytest.raises(grpc.RpcError) as caught:
            stub.Explain(slow, timeout=0.4)
        ended[caught.value.code().name] += 1
    # A deep call first, so admission estimates with a measured per-sample cost (before any,
    # the prior is TorchServe's first call per sample: it would refuse the calls below).
    stub.Explain(explain_request(tiny_input(4), {"ig": {"n_steps": 8}}, Targets(classes=(0,))), timeout=120)
    # Still running when abandoned: it is cancelled as soon as it is in flight.
    cancellable = explain_request(tiny_input(4), {"ig": {"n_steps": 256}}, Targets(classes=tuple(range(8))))
    for _ in range(3):  # admitted (a long deadline), then abandoned by the caller
        future = stub.Explain.future(cancellable, timeout=300)
        # Abandoned once the service has it in flight: a call cancelled before its handler
        # started (a loaded machine) never reaches the service and is counted nowhere.
        until = time.monotonic() + 30
        while service.metric("saliency_inflight_requests", labels) <= 0 and time.monotonic() < until:
            time.sleep(0.02)
        assert future.cancel()
        while service.metric("saliency_inflight_requests", labels) > 0 and time.monotonic() < until:
            time.sleep(0.02)  # ended (counted) before the next one starts
    deadline = time.monotonic() + 20
    while service.metric("saliency_inflight_requests", labels) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.metric("saliency_inflight_requests", labels) == 0
    assert service.metric("saliency_rejected_total", {**labels, "reason": "deadline"}) - reasons["deadline"] == ended["DEADLINE_EXCEEDED"]
    assert service.metric("saliency_rejected_total", {**labels, "reason": "overloaded"}) - reasons["overloaded"] == ended["RESOURCE_EXHAUSTED"]
    assert service.metric("saliency_rejected_total", {**labels, "reason": "cancelled"}) - reasons["cancelled"] == 3
    # TorchServe still computes the abandoned rows until their deadlines; then it serves again.
    response = stub.Explain(explain_request(tiny_input(5), {"gradcam": None}, Targets()), timeout=120)
    assert len(response.attributions) == 1


# ---- defect 3: a row of another input shape fails alone -----------------------------------------


@pytest.mark.parametrize("mode", ["deep", "fast"])
def test_a_row_whose_tensor_is_not_the_model_input_shape_fails_alone(tiny, mode):
    """[3, 40, 40] beside tinycnn's [3, 32, 32] rows: that row gets INVALID_ARGUMENT naming the
    expected shape, the others their maps, and nothing of the batch stays queued."""
    config = yaml.safe_load((STORE / "tinycnn" / "model-config.yaml").read_text())
    runner = BatchRunner(tiny, mode, HandlerSettings.from_model_config(config, default_model="tinycnn"))
    methods = {"ig": {"n_steps": 8}} if mode == "deep" else {"vanilla": None, "gradcam": None}
    inputs = [tiny_input(10), tiny_input(11, size=40), tiny_input(12), tiny_input(13, size=160)]
    rows = [
        RowInput(explain_request(x, methods, Targets(classes=(i + 1,))).SerializeToString())
        for i, x in enumerate(inputs)
    ]
    outcome = runner.run(rows)
    replies = [reply_pb.HandlerReply.FromString(r) for r in outcome.replies]
    assert [r.code for r in replies] == [0, 3, 0, 3], [r.message for r in replies]
    for bad in (replies[1], replies[3]):
        assert bad.message.startswith("tensor.shape:") and "[3, 32, 32]" in bad.message, bad.message
    engine = Engine(tiny, ChunkSizes(8, 16))
    for i in (0, 2):
        local = engine.explain(inputs[i], Targets(classes=(i + 1,)), {m: make_params(m, **(p or {})) for m, p in methods.items()})
        got = {(method_params.METHOD_NAMES[a.method], a.target): a for a in replies[i].response.attributions}
        assert set(got) == {(a.method, a.target) for a in local.attributions}
        for a in local.attributions:
            m = got[a.method, a.target].map
            np.testing.assert_allclose(
                np.frombuffer(m.data, np.float32).reshape(tuple(m.shape)), a.map.numpy(), rtol=1e-4, atol=1e-6
            )
    if runner.executor is not None:
        assert runner.executor.pending_samples == 0
