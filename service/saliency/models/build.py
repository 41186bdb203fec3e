"""Build the nn.Module a model config describes, and load its weights.

Model code is trusted configuration (a file or package the operator installed), never taken
from a request. Weights are data: a state_dict read with `torch.load(weights_only=True)` (which
refuses any pickle that would run code) or from a .safetensors file. Every failure is a
`ModelConfigError` naming the YAML field.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saliency.models.config import ModelConfig, ModelConfigError

MAX_LISTED = 5  # keys listed in a mismatch message


def build_module(config: ModelConfig) -> nn.Module:
    """The config's module with its weights, on the CPU, in eval mode."""
    if config.source == "model_file":
        module = _from_model_file(config)
    elif config.source == "factory":
        module = _from_factory(config)
    elif config.source == "torchscript":
        module = _from_torchscript(config)
    else:
        module = _from_exported(config)
    if config.weights is not None:
        load_weights(module, config.weights, config.path)
    return _eval(module, config)


def _eval(module: nn.Module, config: ModelConfig) -> nn.Module:
    try:
        return module.eval()
    except (NotImplementedError, RuntimeError):
        # ExportedProgram.module() refuses train()/eval(): it was traced in the mode it was exported in.
        if config.source == "exported":
            return module
        raise


def _from_model_file(config: ModelConfig) -> nn.Module:
    path = Path(config.location)
    # A name per file content: two configs of one file share it, an edited file is re-imported.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    name = f"saliency_user_models.{path.stem}_{digest}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ModelConfigError(config.path, "model.model_file", f"{path} cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)
        # Siblings of the model file import as they would beside it (TorchServe's convention).
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelConfigError(config.path, "model.model_file",
                                   f"importing {path.name} raised {type(exc).__name__}: {exc}") from None
        finally:
            sys.path.remove(str(path.parent))
        sys.modules[name] = module
    cls = getattr(module, config.class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                       and v.__module__ == name)
        raise ModelConfigError(config.path, "model.class_name",
                               f"{path.name} defines no nn.Module class {config.class_name!r}; it defines: {found or 'none'}")
    return _call(config, cls, f"{config.class_name}(**kwargs)")


def _from_factory(config: ModelConfig) -> nn.Module:
    module_name, _, attribute = config.location.partition(":")
    try:
        imported = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelConfigError(config.path, "model.factory",
                               f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    factory = getattr(imported, attribute, None)
    if not callable(factory):
        raise ModelConfigError(config.path, "model.factory", f"{module_name} has no callable {attribute!r}")
    module = _call(config, factory, f"{config.location}(**kwargs)")
    if not isinstance(module, nn.Module):
        raise ModelConfigError(config.path, "model.factory",
                               f"{config.location} returned a {type(module).__name__}, not an nn.Module")
    return module


def _call(config: ModelConfig, build: Any, what: str) -> nn.Module:
    try:
        return build(**config.kwargs)
    except TypeError as exc:
        raise ModelConfigError(config.path, "model.kwargs", f"{what} refused its arguments: {exc}") from None
    except Exception as exc:
        raise ModelConfigError(config.path, "model", f"{what} raised {type(exc).__name__}: {exc}") from None


def _from_torchscript(config: ModelConfig) -> nn.Module:
    try:
        return torch.jit.load(config.location, map_location="cpu")
    except Exception as exc:
        raise ModelConfigError(config.path, "model.torchscript",
                               f"not a torch.jit.save() file: {' '.join(str(exc).split())[:300]}") from None


def _from_exported(config: ModelConfig) -> nn.Module:
    try:
        program = torch.export.load(config.location)
    except Exception as exc:
        raise ModelConfigError(config.path, "model.exported",
                               f"not a torch.export.save() program: {' '.join(str(exc).split())[:300]}") from None
    return program.module()


def read_state_dict(path: Path, config_path: Path | str, field: str = "weights") -> dict[str, torch.Tensor]:
    """A state_dict from .pt / .pth (weights_only) or .safetensors; ModelConfigError otherwise."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelConfigError(config_path, field, f"{path.name} is not a readable safetensors file: {exc}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelConfigError(
                config_path, field,
                f"{path.name} needs more than torch.load(weights_only=True) to unpickle, which is refused: it could "
                f"run code. Save model.state_dict() (or use .safetensors). ({first[:200]})",
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise ModelConfigError(config_path, field, f"{path.name} is not a torch.save() file: {str(exc)[:200]}") from None
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in state.items())):
        keys = sorted(map(str, state))[:MAX_LISTED] if isinstance(state, dict) else None
        raise ModelConfigError(
            config_path, field,
            f"{path.name} must hold a state_dict (parameter names -> tensors); got a {type(state).__name__}"
            + (f" with keys {keys}" if keys else ""),
        )
    return state


def load_weights(module: nn.Module, path: Path, config_path: Path | str, field: str = "weights") -> None:
    """Load the state_dict at `path` into `module`, strictly: every key, every shape."""
    state = read_state_dict(path, config_path, field)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {list(state[k].shape)}, model {list(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:MAX_LISTED]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:MAX_LISTED]})")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape ({'; '.join(mismatched[:MAX_LISTED])})")
    if problems:
        raise ModelConfigError(config_path, field,
                               f"{path.name} does not fit the model: keys {', '.join(problems)}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelConfigError(config_path, field, f"{path.name}: {' '.join(str(exc).split())[:300]}") from None
