"""A model config -> a model ready to serve: build, probe, optimise a copy, check parity.

    load_config_model(read_model_config("my_resnet.yaml"), "cpu") -> LoadedModel

Every failure is a ModelConfigError naming the YAML field, raised here, at load: a service
loads all its models before it opens its port, so it never starts half-configured.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import torch

from saliency.errors import InvalidArgument
from saliency.models import LoadedModel, ModelSpec
from saliency.models.build import build_module
from saliency.models.config import ModelConfig, ModelConfigError
from saliency.models.optimize import Parity, serving_copy
from saliency.models.probe import KIND_NAMES, PROBE_BATCH, PROBE_SEED, ModelProfile, probe_model

log = logging.getLogger(__name__)


def declared_spec(config: ModelConfig) -> ModelSpec:
    """What the config says before the model is built: layers named there ("" for auto / none),
    labels when it lists them. `load_config_model` fills in what the probe finds."""
    named = lambda value: value if value not in ("auto", "none") else ""  # noqa: E731
    return ModelSpec(
        name=config.name,
        input_size=config.input_size,
        mean=config.mean,
        std=config.std,
        target_layer=named(config.cam),
        labels=config.labels or (),
        description=config.description,
        build=functools.partial(build_module, config),
        classifier_layer=named(config.classifier),
        pretrained=config.pretrained,
        attention_layers=config.attention if isinstance(config.attention, tuple) else (),
        config=config,
        resize=config.resize,
    )


def load_config_model(config: ModelConfig, device: torch.device | str = "cpu") -> LoadedModel:
    """Build, probe and optimise the model of `config`; the module is served from `device`."""
    device = torch.device(device)
    started = time.perf_counter()
    module = build_module(config)
    kind = "torchscript" if isinstance(module, torch.jit.ScriptModule) else (
        "exported" if config.source == "exported" else "module")
    try:
        profile = probe_model(module, config.input_size, kind, config.cam, config.classifier, config.attention)
    except InvalidArgument as exc:
        raise ModelConfigError(config.path, exc.field or "model", str(exc).removeprefix(f"{exc.field}: ")) from None
    labels = config.labels or tuple(f"class_{i}" for i in range(profile.num_classes))
    if len(labels) != profile.num_classes:
        raise ModelConfigError(config.path, "labels",
                               f"{len(labels)} labels for a model with {profile.num_classes} outputs")
    if kind == "module":
        served, parity = serving_copy(module, profile.foldable, device.type == "cpu", probe_input(config.input_size))
    else:
        served, parity = module, Parity(0, False, 0.0, 0.0, 0.0, "unmodified", f"{KIND_NAMES[kind]} is served as it is")
    served = served.to(device)
    profile = dataclasses.replace(profile, parity=parity)
    spec = dataclasses.replace(
        declared_spec(config),
        target_layer=profile.cam_layer,
        labels=labels,
        classifier_layer=profile.classifier,
        architecture="vit" if profile.has_attention else "cnn",
        attention_layers=profile.attention_layers,
        fused_attention=profile.fused_attention,
        prefix_tokens=max(profile.prefix_tokens, 1),
        cam_tokens=profile.cam_tokens,
        profile=profile,
    )
    log.info("model %s loaded from %s in %.2f s: CAM layer %s; %s", config.name, config.path,
             time.perf_counter() - started, profile.cam_layer or "none", parity.describe())
    return LoadedModel(spec, served, device)


def probe_input(size: tuple[int, int]) -> torch.Tensor:
    """The probe's seeded input [PROBE_BATCH, 3, H, W] (model-input space)."""
    return torch.randn(PROBE_BATCH, 3, *size, generator=torch.Generator().manual_seed(PROBE_SEED))


__all__ = ["ModelProfile", "declared_spec", "load_config_model", "probe_input"]
