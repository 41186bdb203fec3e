"""The model config format: a YAML file that describes one model, read and checked here.

    name: my_resnet                  # the model name clients send
    model:                           # exactly one source
      model_file: nets.py            #   a Python file and the nn.Module class in it ...
      class_name: Net
      # factory: my_pkg.nets:build   #   ... or an importable callable returning an nn.Module
      # exported: model.pt2          #   ... or a torch.export.save() program
      # torchscript: model.pt        #   ... or a torch.jit.save() module
      kwargs: {num_classes: 10}      # passed to the class or factory
    weights: weights.pth             # a state_dict: .pt / .pth (weights_only) or .safetensors
    input: {size: [224, 224], resize: stretch, mean: [...], std: [...]}
    labels: labels.txt               # one name per line, a JSON list, or a YAML list here
    layers: {cam: auto, classifier: auto, attention: auto}

Paths are relative to the YAML file. This module only reads and checks the text (no torch, no
model code runs): every mistake is a `ModelConfigError` whose field is the YAML field, e.g.
`model.class_name`, raised before anything is built. Building is `models/build.py`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saliency.errors import InvalidArgument

SOURCES = ("model_file", "factory", "exported", "torchscript")
RESIZE_MODES = ("stretch", "crop")
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
AUTO, NONE = "auto", "none"
# Model names travel in URLs (/v1/models/{name}:explain) and metric labels.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DOTTED_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
FACTORY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*")
MAX_SIDE = 4096

_TOP_KEYS = ("name", "description", "pretrained", "model", "weights", "input", "labels", "layers")
_MODEL_KEYS = (*SOURCES, "class_name", "kwargs")
_INPUT_KEYS = ("size", "resize", "mean", "std")
_LAYER_KEYS = ("cam", "classifier", "attention")


class ModelConfigError(InvalidArgument):
    """A model config is wrong; `field` is the YAML field (e.g. "input.mean"), and the message
    names the file."""

    def __init__(self, path: Path | str, field: str, message: str):
        self.path = str(path)
        super().__init__(f"{message} (in {self.path})", field)


@dataclass(frozen=True)
class ModelConfig:
    """A checked model config. Paths are absolute; `source` is one of SOURCES and `location`
    its value (a path, or "module:callable" for a factory)."""

    path: Path
    name: str
    source: str
    location: str
    class_name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    input_size: tuple[int, int] = (224, 224)
    resize: str = "stretch"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    labels: tuple[str, ...] | None = None  # None: "class_<i>" for each output
    cam: str = AUTO  # "auto", "none" or a dotted module path
    classifier: str = AUTO
    attention: str | tuple[str, ...] = AUTO  # "auto", "none" or module paths, first block first
    description: str = ""
    pretrained: bool = True

    @property
    def directory(self) -> Path:
        return self.path.parent


def read_model_config(path: str | Path) -> ModelConfig:
    """Read and check the YAML model config at `path`; raises ModelConfigError naming the field."""
    import yaml

    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelConfigError(path, "model_config", f"cannot read the file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelConfigError(path, "model_config", f"not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_model_config(data, path)


def parse_model_config(data: Any, path: Path) -> ModelConfig:
    """A YAML document (already parsed) -> ModelConfig; `path` anchors relative paths."""
    r = _Reader(path)
    r.mapping(data, "", _TOP_KEYS)
    name = r.string(data, "name", required=True)
    r.check(NAME_PATTERN.fullmatch(name) is not None, "name",
            f"{name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")

    model = data.get("model")
    r.mapping(model, "model", _MODEL_KEYS, required=True)
    given = [key for key in SOURCES if key in model]
    r.check(len(given) == 1, "model",
            f"give exactly one of {', '.join(SOURCES)}; got {', '.join(given) or 'none'}")
    source = given[0]
    class_name = r.string(model, "class_name", prefix="model.") if "class_name" in model else ""
    if source == "model_file":
        location = str(r.file(model, "model_file", "model.", suffixes=(".py",)))
        r.check(bool(class_name), "model.class_name", "model_file needs the nn.Module class to build")
        r.check(class_name.isidentifier(), "model.class_name", f"{class_name!r} is not a Python name")
    else:
        r.check(not class_name, "model.class_name", f"class_name only goes with model_file, not {source}")
        if source == "factory":
            location = r.string(model, "factory", prefix="model.")
            r.check(FACTORY_PATTERN.fullmatch(location) is not None, "model.factory",
                    f"{location!r} is not 'package.module:callable'")
        else:
            location = str(r.file(model, source, "model."))
    kwargs = model.get("kwargs", {})
    r.check(isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs), "model.kwargs",
            "must be a mapping of argument names to values")
    r.check(not kwargs or source in ("model_file", "factory"), "model.kwargs",
            f"a {source} program is already built: it takes no kwargs")

    weights = None
    if data.get("weights") is not None:
        weights = r.file(data, "weights", "", suffixes=WEIGHT_SUFFIXES)

    inputs = data.get("input", {})
    r.mapping(inputs, "input", _INPUT_KEYS)
    size = _size(r, inputs.get("size", [224, 224]))
    resize = inputs.get("resize", "stretch")
    r.check(resize in RESIZE_MODES, "input.resize", f"{resize!r} is not one of {', '.join(RESIZE_MODES)}")
    mean = _triple(r, inputs.get("mean", [0.485, 0.456, 0.406]), "input.mean", positive=False)
    std = _triple(r, inputs.get("std", [0.229, 0.224, 0.225]), "input.std", positive=True)

    labels = _labels(r, data.get("labels"))

    layers = data.get("layers", {})
    r.mapping(layers, "layers", _LAYER_KEYS)
    cam = _layer(r, layers.get("cam", AUTO), "layers.cam")
    classifier = _layer(r, layers.get("classifier", AUTO), "layers.classifier")
    attention = layers.get("attention", AUTO)
    if isinstance(attention, list):
        r.check(bool(attention), "layers.attention", "an empty list: say none instead")
        attention = tuple(_layer(r, item, f"layers.attention[{i}]", words=False) for i, item in enumerate(attention))
    else:
        attention = _layer(r, attention, "layers.attention", paths=False)

    description = r.string(data, "description") if "description" in data else ""
    pretrained = data.get("pretrained", weights is not None or source != "model_file")
    r.check(isinstance(pretrained, bool), "pretrained", f"{pretrained!r} is not true or false")
    return ModelConfig(
        path=path, name=name, source=source, location=location, class_name=class_name,
        kwargs=dict(kwargs), weights=weights, input_size=size, resize=resize, mean=mean, std=std,
        labels=labels, cam=cam, classifier=classifier, attention=attention,
        description=description or f"{name} ({source} {Path(location).name if source != 'factory' else location})",
        pretrained=pretrained,
    )


class _Reader:
    """Checks one document; every failure is a ModelConfigError for `path`."""

    def __init__(self, path: Path):
        self.path = path

    def check(self, condition: bool, field: str, message: str) -> None:
        if not condition:
            raise ModelConfigError(self.path, field, message)

    def mapping(self, value: Any, field: str, keys: tuple[str, ...], required: bool = False) -> None:
        where = field or "the file"
        if value is None and not required:
            return
        self.check(isinstance(value, dict), field or "model_config",
                   f"{where} must be a mapping with keys {', '.join(keys)}; got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in keys)
        self.check(not unknown, f"{field}.{unknown[0]}" if field and unknown else (unknown or [""])[0],
                   f"unknown key; {where} takes {', '.join(keys)}")

    def string(self, data: dict, key: str, prefix: str = "", required: bool = False) -> str:
        value = data.get(key)
        self.check(value is not None or not required, prefix + key, "missing")
        self.check(isinstance(value, str) and value.strip() != "", prefix + key,
                   f"must be a non-empty string; got {value!r}")
        return value.strip()

    def file(self, data: dict, key: str, prefix: str, suffixes: tuple[str, ...] = ()) -> Path:
        text = self.string(data, key, prefix)
        resolved = (self.path.parent / Path(text).expanduser()).resolve()
        self.check(resolved.is_file(), prefix + key, f"{text!r} is not a file (looked for {resolved})")
        if suffixes:
            self.check(resolved.suffix.lower() in suffixes, prefix + key,
                       f"{text!r} must end in {' or '.join(suffixes)}")
        return resolved


def _size(r: _Reader, value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    r.check(isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
            "input.size", f"must be [height, width] in pixels (or one number); got {value!r}")
    r.check(all(8 <= v <= MAX_SIDE for v in value), "input.size", f"{value} is outside [8, {MAX_SIDE}] per side")
    return int(value[0]), int(value[1])


def _triple(r: _Reader, value: Any, field: str, positive: bool) -> tuple[float, float, float]:
    r.check(isinstance(value, list) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
            field, f"must be three numbers, one per RGB channel (pixels in [0, 1]); got {value!r}")
    if positive:
        r.check(all(v > 0 for v in value), field, f"{value} must be positive: inputs are divided by it")
    return tuple(float(v) for v in value)


def _labels(r: _Reader, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list):
        names = value
    else:
        path = r.file({"labels": value}, "labels", "")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelConfigError(r.path, "labels", f"cannot read {path}: {exc}") from None
        if text.lstrip().startswith("["):
            try:
                names = json.loads(text)
            except ValueError as exc:
                raise ModelConfigError(r.path, "labels", f"{path.name} is not a JSON list: {exc}") from None
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    r.check(isinstance(names, list) and bool(names) and all(isinstance(n, (str, int)) for n in names),
            "labels", "must be a non-empty list of class names")
    return tuple(str(n) for n in names)


def _layer(r: _Reader, value: Any, field: str, words: bool = True, paths: bool = True) -> str:
    r.check(isinstance(value, str) and value != "", field,
            f"must be {'auto, none or ' if words else ''}a dotted module path{'' if paths else 's list'}; got {value!r}")
    if words and value in (AUTO, NONE):
        return value
    r.check(paths, field, f"{value!r}: give auto, none, or a list of module paths")
    r.check(DOTTED_PATH.fullmatch(value) is not None, field, f"{value!r} is not a dotted module path like layer4.1.relu")
    return value
