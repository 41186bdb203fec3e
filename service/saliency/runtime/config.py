"""Service configuration: defaults < YAML file < environment (SALIENCY_*) < command-line flags.

Every limit is configuration with a safe default; the service binds to loopback unless told
otherwise.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saliency.attribution.limits import Limits
from saliency.runtime.logs import LOG_FORMATS, LOG_LEVELS

BACKENDS = ("embedded", "torchserve")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")  # torch.compile modes


@dataclass(frozen=True)
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # The HTTP/JSON API (docs/http.md), beside gRPC in the same process: off with http_enabled
    # false; http_port 0 picks a free port; an empty http_host binds where gRPC does (`host`).
    http_enabled: bool = True
    http_host: str = ""
    http_port: int = 8080
    models: tuple[str, ...] = ("efficientnet_lite0",)
    # YAML model configs to serve too (docs/models.md), each under its `name`; when `models` is
    # not set, only these. Paths in a config file are relative to that file.
    model_configs: tuple[str, ...] = ()
    backend: str = "embedded"  # embedded (in-process engine) or torchserve
    device: str = "cpu"
    # Limits on what one request may ask for.
    max_message_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_methods: int = 16
    max_overlay_side: int = 2048  # overlays are drawn at most this many pixels on the longest side
    # Memory admission (docs/service.md, "Memory and overload"): what one request may hold, and
    # what all requests in flight may hold together; over either, RESOURCE_EXHAUSTED at once.
    max_request_bytes: int = 512 * 2**20
    max_inflight_bytes: int = 2**30
    limits: Limits = field(default_factory=Limits)
    # Scheduling.
    prepare_workers: int = 2  # threads that decode images and render overlays, off the event loop
    fast_workers: int = 2
    # torch intra-op threads of each fast-pool thread; 0 = the process's count minus one (at
    # least 1). An OpenMP team led by any thread but the main one loses libgomp's spin-wait and
    # ran the fast pass slower with 2 threads than with 1 on 2 CPUs (docs/engine.md, bench/threads.py).
    fast_threads: int = 0
    max_fast_queue: int = 64  # fast requests waiting per model
    max_queue_samples: int = 20_000  # deep samples waiting per model
    max_chunk: int = 0  # samples per model call with gradient; 0 = measured per model
    max_chunk_forward: int = 0  # forward-only; 0 = measured
    # torch.compile the deep methods' forward-only model calls (models/compiled.py): off,
    # default, reduce-overhead (CUDA graphs) or max-autotune. Compiled and checked at start.
    compile_model: str = "off"
    max_batch_delay_ms: float = 5.0  # wait this long for more deep work to fill a chunk
    default_deadline_s: float = 60.0  # applied when the client sets none
    grace_s: float = 10.0  # SIGTERM drain
    # Security.
    auth_tokens_file: str = ""  # one bearer token per line; empty = auth off (unless env)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # set = mutual TLS
    # Introspection and telemetry.
    reflection: bool = True
    otlp_endpoint: str = ""  # empty = no trace export
    # Fraction of Explain requests without `evaluate` whose maps are scored in the background
    # for saliency_explanation_quality (deletion/insertion cost 2 x (steps + 1) forwards per map).
    quality_sample_rate: float = 0.0
    # Explanation cache of the embedded backend (docs/service.md, "Explanation cache"): bytes of
    # maps and predictions kept for inputs seen before, least recently used evicted first; a
    # size such as 64MiB; 0 = off.
    explanation_cache_bytes: int = 64 * 2**20
    # The torchserve backend (docs/torchserve.md).
    torchserve_address: str = ""  # host:port of a running TorchServe's gRPC inference API; empty = start one
    torchserve_key_file: str = ""  # that TorchServe's key_file.json (token authorization)
    torchserve_management_address: str = "127.0.0.1:8081"  # that TorchServe's management API: key renewal
    torchserve_model_store: str = "model_store"  # when starting one: the archives (`make models`)
    torchserve_config: str = "deploy/torchserve/config.properties"  # when starting one: the base config
    torchserve_startup_timeout_s: float = 180.0  # when starting one: until every worker is loaded
    # Logs (docs/deploy.md, "Logs"): JSON lines or text on stderr, and the root level.
    log_format: str = "text"  # json | text
    log_level: str = "info"  # debug | info | warning | error | critical
    # Load spread (docs/deploy.md, "Spreading load"): after this many seconds the server asks a
    # client to reconnect (GOAWAY; gRPC adds +-10 % jitter), so long-lived channels reach pods
    # added since they connected; in-flight calls get the grace to finish. 0 = never / unbounded.
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 0.0
    # Reload (docs/deploy.md, "Certificate and token rotation"): the TLS files and the tokens
    # file are checked this often, and on SIGHUP; 0 = on SIGHUP only.
    reload_interval_s: float = 10.0

    def auth_tokens(self, env: Mapping[str, str] | None = None) -> frozenset[str]:
        """Tokens from SALIENCY_AUTH_TOKENS (comma-separated) and the tokens file (one per
        line, `#` starts a comment). Empty: auth off.

        Fails closed (ValueError naming the setting): a variable that is set but holds no
        token, a tokens file that cannot be read or holds none. An empty (or blank) variable
        counts as unset: compose passes SALIENCY_AUTH_TOKENS="" when no token is given.
        """
        tokens = set(env_auth_tokens(os.environ if env is None else env))
        if self.auth_tokens_file:
            try:
                text = Path(self.auth_tokens_file).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise ValueError(f"config auth_tokens_file: cannot read {self.auth_tokens_file!r}: {reason}") from None
            from_file = _tokens(text.splitlines())
            if not from_file:
                raise ValueError(
                    f"config auth_tokens_file: {self.auth_tokens_file!r} holds no token (one per line, "
                    "# starts a comment); unset auth_tokens_file to turn auth off"
                )
            tokens |= from_file
        return frozenset(tokens)


def _tokens(items: list[str]) -> set[str]:
    """The non-blank items that are not `#` comments, stripped."""
    return {t.strip() for t in items if t.strip() and not t.strip().startswith("#")}


def env_auth_tokens(env: Mapping[str, str]) -> frozenset[str]:
    """The tokens of SALIENCY_AUTH_TOKENS; ValueError if it is set (not blank) but holds none."""
    value = env.get("SALIENCY_AUTH_TOKENS", "")
    tokens = _tokens(value.split(","))
    if value.strip() and not tokens:
        raise ValueError(
            "SALIENCY_AUTH_TOKENS is set but holds no token "
            "(comma-separated); unset it to turn auth off"
        )
    return frozenset(tokens)


def check_tls(config: ServiceConfig) -> None:
    """Partial TLS fails closed: a certificate needs its key and a key its certificate, and a
    client CA (mutual TLS) needs both; otherwise the port would serve plaintext."""
    given = {name for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file") if getattr(config, name)}
    if not given:
        return
    missing = [name for name in ("tls_cert_file", "tls_key_file") if name not in given]
    if missing:
        raise ValueError(
            f"config {' and '.join(missing)}: not set, but {', '.join(sorted(given))} is; TLS needs "
            "tls_cert_file and tls_key_file (and tls_client_ca_file for mutual TLS), or none of them"
        )


_FIELDS = {f.name: f for f in dataclasses.fields(ServiceConfig)}
_LIMIT_FIELDS = {f.name: f for f in dataclasses.fields(Limits)}


# Byte counts that may be written as sizes: 64MiB, 1.5GB, 512k.
_SIZE_FIELDS = frozenset({"explanation_cache_bytes"})


def _coerce(name: str, value: Any, current: Any) -> Any:
    """Turn a YAML / env / flag value into the type of the field's default."""
    if name in _SIZE_FIELDS:
        from saliency.runtime.explanation_cache import parse_size

        try:
            return parse_size(value)
        except ValueError as exc:
            raise ValueError(f"config {name}: {exc}") from None
    if isinstance(current, bool):
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(f"config {name}: {value!r} is not a boolean")
            return lowered in {"1", "true", "yes", "on"}
        return bool(value)
    if isinstance(current, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(i).strip() for i in items if str(i).strip())
    try:
        return type(current)(value)
    except (TypeError, ValueError):
        raise ValueError(f"config {name}: {value!r} is not a valid {type(current).__name__}") from None


def _with_model_configs(config: ServiceConfig, explicit_models: bool) -> ServiceConfig:
    """Read each model config (nothing is built yet: models load at start-up) and serve it
    under its name, beside `models` when those were set, instead of the default otherwise."""
    if not config.model_configs:
        return config
    from saliency.models.config import ModelConfigError, read_model_config

    paths, names = [], []
    for path in config.model_configs:
        try:
            model_config = read_model_config(path)
        except ModelConfigError as exc:
            raise ValueError(f"config model_configs: {exc}") from None
        paths.append(str(model_config.path))
        names.append(model_config.name)
    served = (config.models if explicit_models else ()) + tuple(names)
    twice = sorted({name for name in served if served.count(name) > 1})
    if twice:
        raise ValueError(f"config model_configs: model name(s) {twice} served twice")
    return dataclasses.replace(config, model_configs=tuple(paths), models=served)


def load_config(
    path: str | None = None, env: dict[str, str] | None = None, overrides: dict[str, Any] | None = None
) -> ServiceConfig:
    """Defaults, then the YAML file, then SALIENCY_<FIELD> variables, then `overrides`."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping")
        values.update(loaded)
        if isinstance(loaded.get("model_configs"), list):  # relative to the file that names them
            values["model_configs"] = [str(Path(path).parent / str(p)) for p in loaded["model_configs"]]
    for name in list(_FIELDS) + list(_LIMIT_FIELDS):
        key = f"SALIENCY_{name.upper()}"
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})

    base = ServiceConfig()
    limits = dict(dataclasses.asdict(base.limits))
    nested = values.pop("limits", None) or {}
    for name, value in {**nested, **{k: values.pop(k) for k in list(values) if k in _LIMIT_FIELDS}}.items():
        if name not in _LIMIT_FIELDS:
            raise ValueError(f"unknown limit {name!r}; known: {sorted(_LIMIT_FIELDS)}")
        limits[name] = _coerce(name, value, limits[name])
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}")
    typed = {name: _coerce(name, value, getattr(base, name)) for name, value in values.items()}
    config = dataclasses.replace(base, limits=Limits(**limits), **typed)
    config = _with_model_configs(config, explicit_models="models" in values)
    if config.backend not in BACKENDS:
        raise ValueError(f"config backend: {config.backend!r} is not one of {BACKENDS}")
    if config.compile_model not in COMPILE_MODES:
        raise ValueError(f"config compile_model: {config.compile_model!r} is not one of {COMPILE_MODES}")
    if not 0 <= config.http_port <= 65535:
        raise ValueError(f"config http_port: {config.http_port} is outside 0..65535 (0: a free port)")
    if config.fast_threads < 0:
        raise ValueError(f"config fast_threads: {config.fast_threads} is negative (0 = automatic)")
    if not 0.0 <= config.quality_sample_rate <= 1.0:
        raise ValueError(f"config quality_sample_rate: {config.quality_sample_rate} is outside [0, 1]")
    for name in ("max_connection_age_s", "max_connection_age_grace_s", "reload_interval_s"):
        if getattr(config, name) < 0:
            raise ValueError(f"config {name}: {getattr(config, name)} is negative (0 = unbounded)")
    if config.log_format not in LOG_FORMATS:
        raise ValueError(f"config log_format: {config.log_format!r} is not one of {LOG_FORMATS}")
    if config.log_level.lower() not in LOG_LEVELS:
        raise ValueError(f"config log_level: {config.log_level!r} is not one of {LOG_LEVELS}")
    # Security fails closed. The files themselves are read at start (server.py): they may
    # be mounted only where the service runs.
    check_tls(config)
    env_auth_tokens(env)
    return config
