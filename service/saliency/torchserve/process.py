"""Running TorchServe for the torchserve backend: a hardened child process, or one already running.

`TorchServeProcess.start` launches `torchserve --foreground` from the venv (so its Python
workers import this very `saliency`), in a private working directory that holds the rendered
config.properties, key_file.json (token authorization), the logs and TorchServe's temp dir
(its worker sockets and unpacked archives: two instances on one host never share them). Every
listener binds 127.0.0.1 on a port chosen free at start; the hardening settings of the base
config (deploy/torchserve/config.properties) are enforced whatever that file says.

TorchServe dies with the service, even one killed with SIGKILL: the launcher runs under
watchdog.py (the service's direct child), which ends TorchServe's whole process group
and removes the work dir with key_file.json once the service is gone. A start also sweeps the
work dirs of services that died with their watchdog (`sweep_stale_workdirs`).

`KeyFile` reads TorchServe's key_file.json and renews the inference key through TorchServe's
token API before it expires (keys live `token_expiration_min`, 60 minutes by default).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import yaml
from google.protobuf import empty_pb2

from saliency.models.config import read_model_config
from saliency.torchserve.archive import prepare_model_store
from saliency.torchserve.batch import DEEP_SUFFIX, HandlerSettings
from saliency.torchserve.watchdog import group_members
from saliency.torchserve_api import inference_pb2_grpc as ts_grpc

log = logging.getLogger(__name__)

# Settings that make TorchServe safe to run next to the service; start mode enforces them.
HARDENED = {
    "disable_token_authorization": "false",  # every API needs its key (key_file.json)
    "enable_model_api": "false",  # no registration over the API (CVE-2023-43654)
    "install_py_dep_per_model": "false",  # an archive never pip-installs anything
    "metrics_mode": "prometheus",
}
_ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")


# ------------------------------------------------------------------------ config.properties


def read_properties(path: Path) -> dict[str, str]:
    """A Java-style properties file (key=value lines, # comments) -> {key: value}."""
    settings = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def write_properties(path: Path, settings: Mapping[str, str], header: str) -> None:
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={value}" for key, value in settings.items()]
    Path(path).write_text("\n".join(lines) + "\n")


def archive_settings(mar: Path) -> HandlerSettings:
    """The `saliency:` section of the model-config.yaml packed inside a .mar archive."""
    name = mar.name.removesuffix(".mar")
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        config_file = manifest.get("model", {}).get("configFile")
        config = yaml.safe_load(archive.read(config_file)) if config_file else {}
    return HandlerSettings.from_model_config(config, default_model=name)


def models_property(store: Path, models: Sequence[str]) -> dict:
    """config.properties `models=` for `<m>` and `<m>-deep` of each model, from its archive."""
    entries: dict = {}
    for model in models:
        entries.update(archive_settings(archive_path(store, model)).properties_models(model))
    return entries


def archive_path(store: Path, model: str) -> Path:
    path = Path(store) / f"{model}.mar"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: build the model archives with `make models`")
    return path


def store_settings(base: Mapping[str, str], store: Path) -> dict[str, str]:
    """`base` serving from `store` only (its archives, its metrics declarations), with the
    hardening settings enforced whatever `base` says."""
    settings = dict(base)
    settings["model_store"] = str(store)
    settings["allowed_urls"] = f"file://{re.escape(str(store))}/.*"
    if (store / "metrics.yaml").is_file():
        settings["metrics_config"] = str(store / "metrics.yaml")
    else:
        settings.pop("metrics_config", None)
    settings.update(HARDENED)
    return settings


def render_properties(
    base: Mapping[str, str], store: Path, models: Sequence[str], ports: Mapping[str, int], tmp_dir: Path
) -> dict[str, str]:
    """The base config with every listener on 127.0.0.1:<port>, this model store only, the
    hardening settings enforced, and the registrations' batching from the archives."""
    settings = dict(base)
    for key in _ADDRESS_KEYS:
        settings[key] = f"http://127.0.0.1:{ports[key]}"
    settings["grpc_inference_address"] = "127.0.0.1"
    settings["grpc_inference_port"] = str(ports["grpc_inference_port"])
    settings["grpc_management_address"] = "127.0.0.1"
    settings["grpc_management_port"] = str(ports["grpc_management_port"])
    store = Path(store).resolve()
    settings.update(store_settings(settings, store))
    vmargs = re.sub(r"\s*-Djava\.io\.tmpdir=\S+", "", settings.get("vmargs", "")).strip()
    settings["vmargs"] = f"{vmargs} -Djava.io.tmpdir={tmp_dir}".strip()
    settings["models"] = json.dumps(models_property(store, models), separators=(",", ":"))
    settings.pop("load_models", None)  # the command line names the models
    return settings


def free_loopback_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# ------------------------------------------------------------------------------ the key file


@dataclass(frozen=True)
class _Keys:
    keys: dict[str, str]  # "inference", "management" -> key
    expires: dict[str, float]  # "inference", "management" -> time.time() seconds
    api: str  # the token API's own key (does not expire)


KEY_TYPES = ("inference", "management")


class KeyFile:
    """TorchServe's key_file.json: the keys every call needs, renewed before they expire.

    Keys live `token_expiration_min` (60 by default); TorchServe's token API (on its management
    address, authorized by the file's non-expiring API key) issues new ones and rewrites the file.
    """

    RENEW_BEFORE_S = 600.0  # renew a key when it has less than this to live

    def __init__(self, path: Path, management_address: str = ""):
        self.path = Path(path)
        self.management_address = management_address
        self._keys: _Keys | None = None
        self._mtime: float | None = None
        self._lock = threading.Lock()

    def inference_key(self) -> str:
        """The current inference key (re-read when the file changed). Raises OSError/ValueError."""
        return self._read().keys["inference"]

    def management_key(self) -> str:
        return self._read().keys["management"]

    def reload(self) -> bool:
        """Re-read the file; True when the inference key changed."""
        with self._lock:
            old = self._keys
            self._mtime = None
        try:
            return self._read().keys["inference"] != (old.keys["inference"] if old else None)
        except (OSError, ValueError, KeyError):
            return False

    def _read(self) -> _Keys:
        with self._lock:
            mtime = self.path.stat().st_mtime
            if self._keys is None or mtime != self._mtime:
                try:
                    self._keys = self._parse(json.loads(self.path.read_text()))
                except (ValueError, KeyError, AttributeError):
                    if self._keys is None:
                        raise
                    return self._keys  # caught mid-rewrite: keep the last keys, retry next time
                self._mtime = mtime
            return self._keys

    def _parse(self, data: dict) -> _Keys:
        keys, expires = {}, {}
        for kind in KEY_TYPES:
            entry = data.get(kind) or {}
            keys[kind] = entry.get("key", "")
            if entry.get("expiration time"):
                expires[kind] = _parse_instant(entry["expiration time"])
        if not keys["inference"]:
            raise ValueError(f"{self.path} has no inference key")
        return _Keys(keys, expires, (data.get("API") or {}).get("key", ""))

    def due(self) -> list[str]:
        """The key types that expire within RENEW_BEFORE_S and can be renewed here."""
        try:
            keys = self._read()
        except (OSError, ValueError, KeyError):
            return []
        if not (self.management_address and keys.api):
            return []
        now = time.time()
        return [kind for kind, at in keys.expires.items() if at - now < self.RENEW_BEFORE_S]

    def renewal_due(self) -> bool:
        return bool(self.due())

    def renew_if_due(self) -> bool:
        """Ask TorchServe's token API for new keys of the types about to expire.

        Blocking (HTTP on loopback); True when the inference key changed.
        """
        kinds = self.due()
        if not kinds:
            return False
        api = self._read().api
        for kind in kinds:
            request = urllib.request.Request(
                f"http://{self.management_address}/token?type={kind}",
                method="PUT",
                headers={"Authorization": f"Bearer {api}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5):
                    pass
            except OSError as exc:
                log.warning("could not renew TorchServe's %s key at %s: %s", kind, self.management_address, exc)
                return False
            log.info("renewed TorchServe's %s key", kind)
        return self.reload()


def _parse_instant(text: str) -> float:
    """Java's Instant.toString() ("2026-11-26T00:34:38.710428834Z") -> epoch seconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", text.strip())
    if not match:
        raise ValueError(f"unreadable expiration time {text!r}")
    seconds = datetime.fromisoformat(match.group(1) + "+00:00").timestamp()
    return seconds + float(match.group(2) or 0)


# ----------------------------------------------------------------------------- the process


def describe(management_address: str, key: str, registration: str, timeout: float = 5.0) -> dict:
    """TorchServe's management API description of one registered model (its workers, batching)."""
    request = urllib.request.Request(
        f"http://{management_address}/models/{registration}", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)[0]


def workers_ready(description: Mapping) -> bool:
    """Whether a registration has at least minWorkers workers, all READY (model loaded)."""
    workers = description.get("workers", [])
    return len(workers) >= max(int(description.get("minWorkers", 1)), 1) and all(
        w.get("status") == "READY" for w in workers
    )


def ping(address: str, key: str, timeout: float = 2.0) -> str:
    """TorchServe's health over gRPC: "Healthy" or "Unhealthy". Raises grpc.RpcError."""
    with grpc.insecure_channel(address) as channel:
        reply = ts_grpc.InferenceAPIsServiceStub(channel).Ping(
            empty_pb2.Empty(), metadata=[("authorization", f"Bearer {key}")], timeout=timeout
        )
    return json.loads(reply.health).get("status", "")


class TorchServeProcess:
    """A TorchServe this service started, stopped with it."""

    def __init__(
        self,
        process: subprocess.Popen,
        workdir: Path,
        ports: Mapping[str, int],
        registrations: Sequence[str],
        owns_workdir: bool,
        log_file,
    ):
        self.process = process
        self.workdir = workdir
        self.ports = dict(ports)
        self.registrations = tuple(registrations)
        self._owns_workdir = owns_workdir
        self._log_file = log_file
        self._stopped = False

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.ports['grpc_inference_port']}"

    @property
    def management_address(self) -> str:
        return f"127.0.0.1:{self.ports['management_address']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics_address']}/metrics"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference_address']}"

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "logs" / "torchserve.out"

    @classmethod
    def start(
        cls,
        model_store: str | Path,
        base_config: str | Path,
        models: Sequence[str],
        timeout_s: float = 180.0,
        workdir: str | Path | None = None,
        model_configs: Sequence[str | Path] = (),
    ) -> TorchServeProcess:
        """Launch TorchServe serving `<m>` and `<m>-deep` for each model; return once healthy.

        `models` come from `model_store`'s archives, except those named by `model_configs`:
        with any, the store is one in the work dir holding copies of the others' archives
        and a fresh archive of each config (`archive`)."""
        store = Path(model_store).resolve()
        user_names = {read_model_config(path).name for path in model_configs}
        for model in models:
            if model not in user_names:
                archive_path(store, model)
        if not Path(base_config).is_file():
            raise FileNotFoundError(f"TorchServe config {base_config} is missing (torchserve_config)")
        java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if os.environ.get("JAVA_HOME") else shutil.which("java")
        if not java or not Path(java).exists():
            raise RuntimeError("TorchServe needs Java 17 on PATH (or JAVA_HOME); none was found")
        launcher = Path(sys.executable).with_name("torchserve")
        if not launcher.exists():
            raise RuntimeError(f"{launcher} is missing: pip install 'saliency[torchserve]'")
        owns = workdir is None
        if owns:
            sweep_stale_workdirs(Path(tempfile.gettempdir()))
        root = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX) if owns else workdir).resolve()
        (root / "logs").mkdir(parents=True, exist_ok=True)
        tmp = root / "tmp"
        tmp.mkdir(exist_ok=True)
        if model_configs:
            builtin = [m for m in models if m not in user_names]
            store = root / "model-store"
            try:
                prepare_model_store(model_store, builtin, model_configs, store)
            except BaseException:
                if owns:
                    shutil.rmtree(root, ignore_errors=True)
                raise
        names = [*_ADDRESS_KEYS, "grpc_inference_port", "grpc_management_port"]
        ports = dict(zip(names, free_loopback_ports(len(names))))
        settings = render_properties(read_properties(Path(base_config)), store, models, ports, tmp)
        config_path = root / "config.properties"
        write_properties(config_path, settings, f"Rendered by saliency from {Path(base_config).resolve()}.")
        registrations = [f"{m}{suffix}" for m in models for suffix in ("", DEEP_SUFFIX)]
        command = [
            str(launcher), "--start", "--foreground", "--ncs",
            "--model-store", str(store), "--ts-config", str(config_path),
            "--models", *[f"{name}={name.removesuffix(DEEP_SUFFIX)}.mar" for name in registrations],
        ]
        env = {
            **os.environ,
            # The launcher's pid file and the JVM's temp dir (worker sockets, unpacked archives)
            # are per instance: a second TorchServe on this host never collides with this one.
            "TMPDIR": str(tmp),
            "TEMP": str(tmp),
            "LOG_LOCATION": str(root / "logs"),
            "METRICS_LOCATION": str(root / "logs"),
        }
        # The watchdog (our child, leader of a new process group that the launcher, the JVM and
        # the workers share) ends that group when this process dies, however it dies, and then
        # removes what holds the keys: the work dir we made, or the key file in the caller's.
        cleanup = root if owns else root / "key_file.json"
        watchdog = [
            sys.executable, "-m", "saliency.torchserve.watchdog",
            "--parent", str(os.getpid()), "--cleanup", str(cleanup), "--", *command,
        ]
        log_file = open(root / "logs" / "torchserve.out", "wb")  # noqa: SIM115 - closed in stop()
        try:
            process = subprocess.Popen(
                watchdog, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,  # its own group: stop() ends them all
            )
        except BaseException:
            log_file.close()
            raise
        if owns:
            _write_owner(root, process.pid)
        instance = cls(process, root, ports, registrations, owns, log_file)
        log.info("starting TorchServe (pid %d) in %s, gRPC %s", process.pid, root, instance.grpc_address)
        try:
            instance.wait_ready(timeout_s)
        except BaseException:
            instance.stop(keep_workdir=True)
            raise
        return instance

    def wait_ready(self, timeout_s: float) -> None:
        """Block until TorchServe answers Ping with "Healthy" and every registration's workers
        are READY (Ping is healthy before the workers have loaded their model)."""
        deadline = time.monotonic() + timeout_s
        keys = KeyFile(self.key_file)
        status = "not started"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"TorchServe exited with {self.process.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                status = ping(self.grpc_address, keys.inference_key(), timeout=2)
                if status == "Healthy":
                    waiting = [
                        name for name in self.registrations
                        if not workers_ready(describe(self.management_address, keys.management_key(), name))
                    ]
                    if not waiting:
                        log.info("TorchServe is ready on %s", self.grpc_address)
                        return
                    status = f"workers of {', '.join(waiting)} loading"
            except (OSError, ValueError, KeyError, grpc.RpcError) as exc:
                status = type(exc).__name__
            time.sleep(0.25)
        raise TimeoutError(
            f"TorchServe was not ready within {timeout_s:.0f} s (last: {status}); "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return not self._stopped and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 20.0, keep_workdir: bool = False) -> None:
        """SIGTERM to TorchServe's whole process group (launcher, JVM, workers), then SIGKILL."""
        if self._stopped:
            return
        self._stopped = True
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            if _group_gone(self.process, wait):
                break
        self._log_file.close()
        if self._owns_workdir and not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:  # the logs stay for whoever reads them; the keys of a stopped TorchServe do not
            self.key_file.unlink(missing_ok=True)


# ------------------------------------------------------------------- work dirs left behind

WORKDIR_PREFIX = "saliency-torchserve-"
OWNER_FILE = "owner.json"  # in a work dir we made: who uses it (pids and their start times)


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): a pid's identity against reuse;
    None when it does not run (gone, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # state is field 3, starttime field 22
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _write_owner(root: Path, watchdog_pid: int) -> None:
    owner = {
        "service": {"pid": os.getpid(), "start": _start_time(os.getpid())},
        "watchdog": {"pid": watchdog_pid, "start": _start_time(watchdog_pid)},
        "group": watchdog_pid,
    }
    (root / OWNER_FILE).write_text(json.dumps(owner))


def _runs(entry: Mapping) -> bool:
    return entry.get("start") is not None and _start_time(int(entry["pid"])) == entry["start"]


def sweep_stale_workdirs(parent: Path) -> list[Path]:
    """Remove the work dirs under `parent` whose service and watchdog both no longer run (both
    killed at once, say), after ending any process of theirs still running. Returns them.

    The watchdog cleans up after a service that dies alone; this is the second line, at the
    next start on the host. A process is ended only if it is in the dead watchdog's process
    group *and* names the work dir on its command line (the launcher's --ts-config, the JVM's
    java.io.tmpdir, a worker's socket): never another program that reused a pid.
    """
    swept = []
    for workdir in sorted(Path(parent).glob(WORKDIR_PREFIX + "*")):
        try:
            owner = json.loads((workdir / OWNER_FILE).read_text())
            if _runs(owner["service"]) or _runs(owner["watchdog"]):
                continue
            group = int(owner["group"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not one of ours, or still being set up
        for pid in group_members(group):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    names_it = str(workdir).encode() in f.read()
                if names_it:
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        shutil.rmtree(workdir, ignore_errors=True)
        log.warning("removed %s, left behind by a saliency service (pid %s) that no longer runs",
                    workdir, owner["service"].get("pid"))
        swept.append(workdir)
    return swept


def _group_gone(process: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the watchdog and every other member of its process group to exit (a zombie
    left for a reaper counts as exited)."""
    deadline = time.monotonic() + timeout_s
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    while time.monotonic() < deadline:
        if not group_members(process.pid):
            return True
        time.sleep(0.1)
    return False
