"""The chart's TorchServe sidecar, run for real: the rendered container (its launcher script as
PID 1 of a new PID namespace, its args, its config.properties and log4j2.xml from the ConfigMap)
starts TorchServe with the archives of `make models`; its rendered readiness probe turns
ready; the registrations carry the chart's batching (and the archive's response timeout: the
chart sets none, as config.properties cannot override it); logs go to stdout
and nowhere else; SIGTERM stops Java and ends the container in seconds, not at the grace
period's SIGKILL. Ports are moved to free ones; everything else is as rendered."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from service_harness import free_port
from test_deploy_chart import CHART, HELM, ROOT, helm_env


def _can_unshare() -> bool:
    """A new PID namespace needs root (CAP_SYS_ADMIN): there on this project's machines and CI."""
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17 (java on PATH)"),
    pytest.mark.skipif(not _can_unshare(), reason="running a container's PID 1 needs unshare --pid (root)"),
]
STORE = "/opt/saliency/model_store"


@pytest.fixture(scope="module")
def rendered() -> dict:
    assert HELM.exists(), "helm is missing: run `make tools` (`make test` does)"
    subprocess.run(["make", "-s", "models"], cwd=ROOT, check=True, timeout=900)
    out = subprocess.run(
        [str(HELM), "template", "saliency", str(CHART), "-f", str(CHART / "ci" / "torchserve-values.yaml"),
         "--set", "config.models={tinycnn}", "--set", "torchserve.deep.maxBatchDelayMs=37"],
        capture_output=True, text=True, env=helm_env(ROOT), timeout=60, check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and "log4j2.xml" in d["data"])
    return {"container": next(c for c in pod["containers"] if c["name"] == "torchserve"), "files": config_map["data"]}


def unshared(argv: list[str], **kwargs) -> subprocess.Popen:
    """argv as PID 1 of a new PID namespace (with its own /proc), as in a container."""
    return subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv], **kwargs)


def pid_one(launcher: subprocess.Popen) -> psutil.Process:
    """The namespace's PID 1, as this namespace sees it (the child unshare forked)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = psutil.Process(launcher.pid).children()
        if children:
            return children[0]
        time.sleep(0.02)
    raise AssertionError("unshare started no child")


def test_pid_one_without_a_handler_ignores_sigterm():
    """Why the launcher script exists: the kernel gives PID 1 no default signal actions."""
    sleeper = unshared([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pid_one(sleeper).send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            sleeper.wait(timeout=1.5)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_the_rendered_sidecar_runs_reports_ready_logs_to_stdout_and_stops_on_sigterm(rendered, tmp_path):
    ports = {old: free_port() for old in (8080, 8081, 8082, 7070, 7071)}

    def local(text: str) -> str:
        for old, new in ports.items():
            text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}").replace(f"127.0.0.1', {old})", f"127.0.0.1', {new})")
            text = text.replace(f"_port={old}", f"_port={new}")
        return text.replace(STORE, str(ROOT / "model_store")).replace("/etc/torchserve", str(tmp_path / "etc"))

    (tmp_path / "etc").mkdir()
    for name, text in rendered["files"].items():
        (tmp_path / "etc" / name).write_text(local(text))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    container = rendered["container"]
    argv = [local(a) for a in container["command"] + container["args"]]
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path), "TMPDIR": str(tmp_path),  # the launcher's pid file stays ours
        "OMP_NUM_THREADS": "1",
    }
    log = (tmp_path / "stdout.log").open("w")
    launcher = unshared(argv, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        init = pid_one(launcher)
        assert init.name() == "sh"
        # The rendered readiness probe, as the kubelet would run it in the container.
        probe = [sys.executable if a == "python" else local(a) for a in container["readinessProbe"]["exec"]["command"]]
        deadline = time.monotonic() + 240
        while subprocess.run(probe, cwd=run_dir, capture_output=True, timeout=30).returncode != 0:
            assert launcher.poll() is None, (tmp_path / "stdout.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "never ready:\n" + (tmp_path / "stdout.log").read_text()[-3000:]
            time.sleep(1)
        liveness = [sys.executable if a == "python" else local(a) for a in container["livenessProbe"]["exec"]["command"]]
        assert subprocess.run(liveness, capture_output=True, timeout=30).returncode == 0

        key = json.loads((run_dir / "key_file.json").read_text())["management"]["key"]
        described = {}
        for name in ("tinycnn", "tinycnn-deep"):
            request = urllib.request.Request(
                f"http://127.0.0.1:{ports[8081]}/models/{name}", headers={"Authorization": f"Bearer {key}"}
            )
            described[name] = json.load(urllib.request.urlopen(request, timeout=10))[0]
        # The chart's batching is in force; the response timeout is the archive's (the chart sets none).
        assert (described["tinycnn"]["batchSize"], described["tinycnn-deep"]["batchSize"]) == (4, 32)
        assert described["tinycnn-deep"]["maxBatchDelay"] == 37
        archived = yaml.safe_load((ROOT / "model_store" / "tinycnn" / "model-config.yaml").read_text())
        assert {d["responseTimeout"] for d in described.values()} == {archived["responseTimeout"]}

        java = [p for p in init.children(recursive=True) if p.name() == "java"]
        assert java, "no Java frontend under the launcher"
        started = time.monotonic()
        init.send_signal(signal.SIGTERM)
        launcher.wait(timeout=25)
        took = time.monotonic() - started
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=30)
        log.close()
    assert took < 20, f"SIGTERM took {took:.1f} s"
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in java), "Java outlived the container"
    stdout = (tmp_path / "stdout.log").read_text()
    assert "org.pytorch.serve" in stdout and "MODEL_LOG" in stdout, stdout[-2000:]  # log4j2.xml applied
    written = [p for p in tmp_path.rglob("*") if p.suffix in (".log", ".gz") and p.name != "stdout.log"]
    assert not written and not (run_dir / "logs").exists(), written
