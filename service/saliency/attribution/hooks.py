"""The one place that registers hooks on a model, and only inside a context manager.

Hooks are removed in `finally`, so an exception in any method leaves the model as it was.
A captured output is recorded only for the thread that opened the context: a model shared by
threads never hands one request's activations to another.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from saliency.errors import InvalidArgument


def resolve_layer(model: nn.Module, dotted_name: str) -> nn.Module:
    """Find a submodule by its dotted path (as in `named_modules`)."""
    modules = dict(model.named_modules())
    if dotted_name not in modules:
        raise InvalidArgument(f"model has no layer named {dotted_name!r}", "target_layer")
    return modules[dotted_name]


@contextmanager
def capture_output(model: nn.Module, layer: str) -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives `layer`'s output tensor on every forward call in this thread."""
    module = resolve_layer(model, layer)
    owner = threading.get_ident()
    captured: list[torch.Tensor] = []

    def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if threading.get_ident() == owner:
            captured.append(output)

    handle = module.register_forward_hook(record)
    try:
        yield captured
    finally:
        handle.remove()


def has_hooks(model: nn.Module) -> bool:
    """True if any module of `model` carries a forward/backward hook (used by hygiene tests)."""
    for module in model.modules():
        if (
            module._forward_hooks
            or module._forward_pre_hooks
            or module._backward_hooks
            or getattr(module, "_backward_pre_hooks", None)
        ):
            return True
    return False
